"""`mini_classifier`: object / colour / style accuracy of MiniSD images, read by the bundled judge.

Protocol: the judge (erasure/judges/minisd.py, 100% on fresh renders) labels each 64x64 image;
an accuracy is the fraction of images whose label equals the expected value, over the images
whose row sets that attribute (`expected[i]["object"]` etc.; absent or None = not checked).
"""
from __future__ import annotations

from typing import Any

import torch

from ...judges.minisd import LABELS, classify, judge_record
from . import Metric, register_metric


@register_metric
class MiniClassifier(Metric):
    name = "mini_classifier"

    def judge(self) -> dict[str, Any]:
        return judge_record()

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        preds = classify(images)
        summary: dict[str, Any] = {}
        for attr in LABELS:
            checked = [(p[attr], e.get(attr)) for p, e in zip(preds, expected) if e.get(attr)]
            summary[f"{attr}_acc"] = sum(a == b for a, b in checked) / len(checked) if checked else None
            summary[f"{attr}_n"] = len(checked)
        return {"summary": summary, "per_image": preds,
                "protocol": {"judge": "MiniSD judge (bundled)", "rule": "label == expected, over images whose row sets it"}}
