"""`clip_zero_shot`: how often images read as a target label among a fixed label set, by CLIP.

Protocol: the metric's `labels` (texts, e.g. "a painting by Vincent van Gogh", "a painting by
Claude Monet", ...) are embedded by the CLIP model given as `model` (a local transformers CLIP
folder, erasure/judges/clip.py); each image gets the label of highest image-text cosine
(erasure/judges/clip_zero_shot.py).
`target_rate` = fraction of images whose top label is `target` (default: the first label).
Per image: the top label and whether it is the target.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import UserError
from ...judges.clip import load_clip, missing_weights
from ...judges.clip_zero_shot import zero_shot
from . import Metric, register_metric


@register_metric
class ClipZeroShot(Metric):
    name = "clip_zero_shot"

    def check(self) -> None:
        if not self.settings.get("model"):
            raise UserError(missing_weights("clip_zero_shot"))
        if not self.settings.get("labels"):
            raise UserError("clip_zero_shot needs its label texts: labels=[target, other, ...]")
        load_clip(self.settings["model"], str(self.settings.get("device", "cpu")))

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        labels = list(self.settings["labels"])
        target = self.settings.get("target") or labels[0]
        preds = zero_shot(images, labels, self.settings["model"], str(self.settings.get("device", "cpu")))
        shown = [p["label"] == target for p in preds]
        return {"summary": {"target_rate": sum(shown) / len(shown) if shown else None, "n_images": len(shown)},
                "per_image": [{"label": p["label"], "shows_target": s} for p, s in zip(preds, shown)],
                "protocol": {"judge": f"CLIP zero-shot ({self.settings['model']}), top-1 among {len(labels)} labels",
                             "labels": labels, "target": target,
                             "rule": "an image shows the target when the target label has the highest cosine"}}
