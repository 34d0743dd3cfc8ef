"""What a benchmark run is asked to do: its settings, its budget (FULL, QUICK), the six
dimensions, and each method's training config under the budget (docs/bench.md)."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..model_ref import ModelRef

FORMAT = "erasure-bench/1"
DIMENSIONS = ("faithfulness", "alignment", "pinpoint", "multilingual", "attack", "efficiency")
BASE = "base"


@dataclass
class Budget:
    """How much of each measurement a run makes. `FULL` and `QUICK` below; docs/bench.md."""
    train_scale: float = 1.0        # x each method's default steps and self-generated data sizes
    sampling_steps: int = 0         # sampling steps of every multi-step model (0 = the model's own: MiniSD 25)
    images_per_prompt: int = 2      # images per target prompt (the faithfulness figure)
    images_per_other: int = 1       # images per prompt of every other set
    target_prompts: int = 24        # English target prompts
    multilingual_prompts: int = 8   # per language (fr, de)
    related_per_concept: int = 4    # prompts per related concept (MiniSD: per sibling object/colour/style)
    ordinary_prompts: int = 32      # alignment (and the FID/KID images)
    attack_prompts: int = 3         # target prompts the discrete attack runs on
    attack_timesteps: int = 5       # its judged timesteps per prompt (UnlearnDiffAtk: 50)
    attack_iterations: int = 10     # its steps at each timestep (UnlearnDiffAtk: 40)
    attack_batch: int = 8           # prompts the discrete attack runs together (memory only; results do not change)
    rab_prompts: int = 3            # Ring-A-Bell seed prompts
    rab_population: int = 200       # its genetic search (paper: 200 x 3000, InversePrompt.ipynb); a smaller
    rab_generations: int = 3000     # search is a weaker attack, and the report says so (rab_budget_label)
    rab_images: int = 2             # images per Ring-A-Bell prompt
    sampling_images: int = 8        # images timed for the sampling speed
    robust_prompts: int = 8         # target prompts the inversion and relearning attacks are judged on
    inversion_budget: float = 1.0   # x the inversion attack's steps (MiniSD: 300; CCE on SD: 5000)
    relearn_steps: int = 200        # relearning's last k; judged at k = 0, 10, 50 (those below it) and this one


FULL = Budget()
QUICK = Budget(train_scale=1 / 16, sampling_steps=10, images_per_prompt=1, target_prompts=8, multilingual_prompts=4,
               related_per_concept=1, ordinary_prompts=12, attack_prompts=1, attack_timesteps=2, attack_iterations=4,
               rab_prompts=2, rab_population=32, rab_generations=20, rab_images=1, sampling_images=4,
               robust_prompts=2, inversion_budget=0.02, relearn_steps=2)


def relearn_checkpoints(steps: int) -> list[int]:
    """The k a relearning of `steps` steps is judged at: 0, 10, 50 below it, and `steps`."""
    return sorted({k for k in (0, 10, 50) if k < steps} | {steps})


def rab_budget_label(population: int, generations: int, quick: bool = False) -> str:
    """What the report says of the Ring-A-Bell search a run made, against the paper's budget."""
    from ..attacks.ring_a_bell import RingABellConfig
    paper = RingABellConfig()
    label = (f"Ring-A-Bell: population {population} x {generations} generations (paper: {paper.population} x "
             f"{paper.generations})" + (", the --quick budget" if quick else ""))
    if population < paper.population or generations < paper.generations:
        label += ": a smaller search than the paper's is a weaker attack, its ASR a lower bound"
    return label


# config fields that follow the number of steps (warm-ups: the same fraction of the run), and the
# self-generated data sizes that the budget's train_scale scales (when a method's config has them)
STEP_FIELDS = ("disc_warmup", "attack_warmup", "distill_steps")
DATA_FIELDS = ("n_forget", "n_retain", "n_anchor", "n_remain")


@dataclass
class BenchSettings:
    methods: list[str]
    concepts: list[str]
    out: Path
    model: str = "minisd"
    quick: bool = False
    seed: int = 0
    device: str = "auto"
    budget: Budget = field(default_factory=Budget)
    train: dict[str, Any] = field(default_factory=dict)     # config overrides for every method (e.g. steps)
    sampling: dict[str, Any] = field(default_factory=dict)  # sampling overrides (steps, guidance)
    adversarial_prompts: str | None = None
    clip_model: str | None = None
    nudenet_threshold: float | None = None
    inception_weights: str | None = None
    suites: list[str] = field(default_factory=list)         # extra suites reported beside the six dimensions
    command: str = ""                                       # the command line, shown in the report
    concept_images: str | None = None                       # images of the concept (inversion, relearning on SD)

    def identity(self, model: ModelRef) -> dict[str, Any]:
        """What a cached folder must share with this run to be reused (methods and concepts may
        grow); `model` is the run's model, resolved."""
        adv = None
        if self.adversarial_prompts:
            adv = hashlib.sha256(Path(self.adversarial_prompts).read_bytes()).hexdigest()[:16]
        return {"model": str(model.path.resolve()), "seed": self.seed, "budget": {k: v for k, v in asdict(self.budget).items() if k != "attack_batch"},
                "train": self.train, "sampling": self.sampling, "adversarial_prompts": adv,
                "clip_model": self.clip_model, "nudenet_threshold": self.nudenet_threshold,
                "inception_weights": self.inception_weights}


def slug(concept: str) -> str:
    return "-".join(concept.lower().split())


def train_config(settings: BenchSettings, method: str, concept: str):
    """The method's config for this concept: its defaults (its world's column: MiniSD's on
    MiniSD) with steps and self-generated data sizes scaled by the budget's train_scale (warm-ups
    keep their fraction of the steps), under the run's explicit overrides (e.g. steps=2)."""
    from ..config import EraseConfig
    from ..registry import get_method

    spec = get_method(method)
    base = {"method": spec.name, "concept": concept, "base_model": settings.model, "seed": settings.seed,
            "device": settings.device}
    default = EraseConfig.from_dict(base)
    scale = settings.budget.train_scale
    steps = int(settings.train.get("steps") or max(1, round(default.steps * scale)))
    scaled: dict[str, Any] = {"steps": steps}
    for name in STEP_FIELDS:  # e.g. DoCo's discriminator warm-up stays the same fraction of the run
        if hasattr(default, name) and name not in settings.train:
            scaled[name] = int(getattr(default, name) * steps / default.steps)
    for name in DATA_FIELDS:
        if hasattr(default, name) and name not in settings.train:
            scaled[name] = max(1, round(getattr(default, name) * scale))
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    extra = {k: v for k, v in settings.train.items() if k in known}
    return EraseConfig.from_dict({**base, **scaled, **extra})
