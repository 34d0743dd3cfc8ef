"""What `erasure bench` shows each model for one concept, and how it reads the images: the
prompt sets and judges behind HUB's six dimensions (Moon et al., ICCV 2025), one protocol per
world, chosen by `world_for(model).name`:

  * "mini" (`MiniProtocol`, mini.py): a concept the world's labelled judge reads (MiniSD: an
    object, colour or style), prompts from the world's held-out captions and caption grammar;
  * "stable-diffusion" (`OpenProtocol`, open.py): a concept of the open world's catalogue,
    judged by NudeNet or CLIP zero-shot.

Each set is written as a CSV into the run's folder, so `erasure eval --prompts THAT.csv` sees the
very prompts (and seeds) the bench used.
"""
from __future__ import annotations

from ...errors import UserError
from .common import LANGUAGES, PromptSet, read_adversarial_prompts, spread, write_csv
from .mini import MiniProtocol
from .open import OpenProtocol

PROTOCOLS: dict[str, type] = {"mini": MiniProtocol, "stable-diffusion": OpenProtocol}

__all__ = [
    "LANGUAGES",
    "PROTOCOLS",
    "MiniProtocol",
    "OpenProtocol",
    "PromptSet",
    "make_protocol",
    "read_adversarial_prompts",
    "spread",
    "write_csv",
]


def make_protocol(concept: str, world, settings):
    """The protocol that judges `concept` in `world` (the bench model's), or a one-line UserError."""
    cls = PROTOCOLS.get(world.name)
    if cls is None:
        raise UserError(f"the benchmark has no protocol for the world '{world.name}' (it knows "
                        f"{', '.join(PROTOCOLS)})")
    return cls.create(concept, world, settings)
