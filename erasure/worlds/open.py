"""The open world: Stable Diffusion and any model of its layout. Any concept can be erased (the
methods train on its words, the papers' recipe); the concepts listed in the catalogue
(erasure/data/worlds/stable-diffusion.yaml: nudity, Van Gogh, church, parachute, tench, garbage
truck) also have aliases, a judge, a default anchor, demo examples and the benchmark's prompts.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError
from .base import ConceptJudge, World

CATALOGUE = Path(__file__).parent.parent / "data" / "worlds" / "stable-diffusion.yaml"
UNRELATED = ["a photo of a dog on a beach", "a city street at night", "a bowl of fruit on a table"]


@lru_cache(maxsize=1)
def catalogue() -> dict[str, dict]:
    """Concept name -> its entry (aliases, anchor, judge, prompt sets, ...)."""
    import yaml
    return yaml.safe_load(CATALOGUE.read_text(encoding="utf-8"))


class OpenWorld(World):
    name = "stable-diffusion"
    title = "Stable Diffusion"
    description = "Stable Diffusion (any SD 1.x/2.x-layout model)"
    attack_sampler = "lms"  # UnlearnDiffAtk's evaluation samples with LMSDiscreteScheduler (docs/bench.md)

    def canonical(self, concept: str) -> str | None:
        key = " ".join(concept.strip().lower().split())
        for name, entry in catalogue().items():
            if key == name or key in [a.lower() for a in entry.get("aliases", [])]:
                return name
        return None

    def entry(self, concept: str) -> dict:
        name = self.canonical(concept)
        return catalogue()[name] if name else {}

    def concept_recipe(self, method: str, concept: str) -> dict:
        """The catalogue's `recipes` entry of the concept for `method` (its exact name, else its
        family: "esd-x" falls back to "esd"). Several concepts ("nudity, van gogh") take the
        settings every concept's recipe agrees on; a concept not in the catalogue adds none
        (the method's own defaults, its paper's generic recipe)."""
        recipes = []
        for c in [c.strip() for c in concept.split(",") if c.strip()] or [""]:
            per_method = self.entry(c).get("recipes", {}) if c else {}
            recipes.append(dict(per_method.get(method, per_method.get(method.split("-")[0], {}))))
        first, *rest = recipes
        return {k: v for k, v in first.items() if all(r.get(k, object()) == v for r in rest)}

    def concept_prompts(self, concept: str, setting: str, n: int = 64, seed: int = 0) -> list[str]:
        """`auto`: the catalogue's name of the concept ("nude" trains as "nudity", the papers'
        prompt), the concept text for one it does not list; `word`: the text as given."""
        if setting == "auto":
            return [self.canonical(concept) or concept]
        return super().concept_prompts(concept, setting, n, seed)

    def concept_phrases(self, concept: str) -> list[str]:
        name = self.canonical(concept)
        if name is None:
            return [concept]
        return sorted({concept, name, *catalogue()[name].get("aliases", [])}, key=len, reverse=True)

    def default_anchor(self, concept: str) -> str:
        anchor = self.entry(concept).get("anchor")
        if anchor:
            return anchor
        return super().default_anchor(concept)

    def concept_judge(self, concept: str, threshold: float | None = None) -> tuple[ConceptJudge, str]:
        if self.entry(concept).get("judge") != "nudenet":
            raise UserError(f"no judge knows the concept '{concept}': attacks are judged for nudity (NudeNet) and MiniSD "
                            "objects, colours and styles")
        from ..judges import nudenet
        threshold = nudenet.DEFAULT_THRESHOLD if threshold is None else nudenet.check_threshold(threshold)
        nudenet.load_detector()  # a missing extra fails before any image is made

        def nude(images: torch.Tensor) -> list[bool]:
            return [nudenet.is_nude(d, threshold) for d in nudenet.detect(images)]
        return nude, f"NudeNet detector, 9 *_EXPOSED classes, threshold {threshold}"

    def concept_pairs(self, concept: str, prompts: list[str]) -> list[tuple[str, str]]:
        """The catalogue's paired prompts of the concept (Ring-A-Bell's), else the generic pairs."""
        pairs = self.entry(concept).get("pairs")
        return [(a, b) for a, b in pairs] if pairs else super().concept_pairs(concept, prompts)

    def concept_judge_record(self, concept: str, threshold: float | None = None) -> dict | None:
        if self.entry(concept).get("judge") != "nudenet":
            return None
        from ..judges import nudenet
        return nudenet.judge_record(nudenet.DEFAULT_THRESHOLD if threshold is None else threshold)

    def verdicts(self, images: torch.Tensor) -> list[tuple[str, bool]]:
        """NudeNet's exposed classes; a nude image (and every image, when NudeNet is missing) blurs."""
        from ..judges import nudenet
        try:
            detections = nudenet.detect(images)
        except UserError as e:  # NudeNet is not installed: nothing can be shown unjudged
            return [(f"not judged ({e}); blurred", True)] * len(images)
        out = []
        for dets in detections:
            exposed = nudenet.classes_above(dets)
            if exposed:
                scores = {c: max(float(d["score"]) for d in dets if d["class"] == c) for c in exposed}
                out.append(("nude: " + ", ".join(f"{c} {s:.2f}" for c, s in sorted(scores.items())) + " · blurred", True))
            else:
                out.append(("not nude", False))
        return out

    def comparison_prompts(self, concepts: list[str]) -> tuple[list[str], list[str]]:
        return [f"a photo of {c}" for c in concepts], list(UNRELATED)

    def example_prompts(self, concept: str | None) -> tuple[list[str], list[str]]:
        c = (concept or "").split(",")[0].strip()
        examples = self.entry(c).get("examples") if c else None
        if examples:
            return list(examples["erase"]), list(examples["keep"])
        if not c:
            return ["a photo of a church"], ["a photo of a dog in a park"]
        return ([f"a painting in the style of {c}", f"a picture of {c}"],
                ["a painting in the style of Claude Monet", "a photo of a dog in a park"])
