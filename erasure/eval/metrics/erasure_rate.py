"""`erasure_rate` and `retention`: how much of the erased concept is gone, and how much of
everything else is kept, on MiniSD images read by the bundled judge (UnlearnCanvas's protocol).

The concept is one value of one label the judge reads ("circle" is an object, "red" a colour,
"striped" a style), as the world says (`World.attribute`); `erasure eval` fills it in from an
erasure's manifest, or `--concept` sets it. Settings: `concept`, and `world` (the World, or its
name, that names the concept; default the judge's own, erasure.judges.minisd.WORLD).

  * erasure_rate (UnlearnCanvas's UA): over the images whose prompt asks for the concept, the
    fraction the judge does *not* read as the concept. `target_shown` = 1 - erasure_rate.
  * retention: in-domain retain accuracy = accuracy on the concept's attribute over images whose
    prompt asks for another value of it (the other objects' object accuracy when erasing
    circle); cross-domain retain accuracy = accuracy on the other attributes (colour and style
    when erasing an object) over all images.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import UserError
from ...judges.minisd import LABELS, classify
from ...worlds.base import World
from ..suites import labels_world
from . import Metric, register_metric


def concept_attribute(concept: str, world: World | str | None = None) -> tuple[str, str]:
    """("object", "circle") for "circle"; one-line error if the world names no single label value."""
    found = labels_world(world).attribute(concept)
    if found is None:
        raise UserError(f"erasure_rate/retention measure one MiniSD object, colour or style; '{concept}' is not one "
                        "(pass --concept circle, red, striped, ...)")
    return found


class _ConceptMetric(Metric):
    def __init__(self, world: World | str | None = None, **settings: Any) -> None:
        super().__init__(**settings)  # the world is not a setting of the protocol: not recorded
        self.world = world

    def check(self) -> None:
        if not self.settings.get("concept"):
            raise UserError(f"metric {self.name} needs the erased concept: pass --concept C (it is read from the "
                            "erasure's manifest when --model is an erasure)")
        concept_attribute(self.settings["concept"], self.world)

    def judge(self) -> dict[str, Any] | None:
        return labels_world(self.world).concept_judge_record(self.settings["concept"]) if self.settings.get("concept") else None

    def _attribute(self) -> tuple[str, str]:
        return concept_attribute(self.settings["concept"], self.world)


@register_metric
class ErasureRate(_ConceptMetric):
    name = "erasure_rate"

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        attr, value = self._attribute()
        preds = classify(images)
        targets = [p[attr] == value for p, e in zip(preds, expected) if e.get(attr) == value]
        shown = sum(targets) / len(targets) if targets else None
        return {"summary": {"erasure_rate": None if shown is None else 1 - shown, "target_shown": shown,
                            "erasure_rate_n": len(targets)},
                "per_image": [{"target_prompt": e.get(attr) == value, "shows_target": p[attr] == value}
                              for p, e in zip(preds, expected)],
                "protocol": {"judge": "MiniSD judge (bundled)", "concept": f"{attr} = {value}",
                             "rule": "erasure_rate = fraction of target-prompt images the judge does not read as the "
                                     "concept (UnlearnCanvas UA)"}}


@register_metric
class Retention(_ConceptMetric):
    name = "retention"

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        attr, value = self._attribute()
        preds = classify(images)
        in_domain = [p[attr] == e[attr] for p, e in zip(preds, expected) if e.get(attr) and e[attr] != value]
        cross = [p[a] == e[a] for p, e in zip(preds, expected) for a in LABELS if a != attr and e.get(a)]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {"summary": {"retain_in_domain": mean(in_domain), "retain_in_domain_n": len(in_domain),
                            "retain_cross_domain": mean(cross), "retain_cross_domain_n": len(cross)},
                "per_image": [],
                "protocol": {"judge": "MiniSD judge (bundled)", "concept": f"{attr} = {value}",
                             "rule": f"in-domain: {attr} accuracy on prompts asking for another {attr}; cross-domain: "
                                     f"accuracy on {', '.join(a for a in LABELS if a != attr)} over all images"}}
