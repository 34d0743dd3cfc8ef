"""Worlds: what a model family knows about its concepts (erasure/worlds/base.py).

`world_for(model)` is the one rule that says which world a model belongs to: a model folder
names its world in `erasure_world.json` ({"world": "mini"}; MiniSD ships one, an erasure's base
model decides for the erasure); a folder without one belongs to the open world of Stable
Diffusion concepts. A name that resolves to no folder yet (a config's placeholder) is open too.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from .base import World

WORLD_FILE = "erasure_world.json"
OPEN = "stable-diffusion"


@lru_cache(maxsize=None)
def get_world(name: str) -> World:
    """The world of that name: "mini" (MiniSD) or "stable-diffusion" (the open world)."""
    if name == "mini":
        from .mini.concepts import MiniWorld
        return MiniWorld()
    if name == OPEN:
        from .open import OpenWorld
        return OpenWorld()
    from ..errors import UserError
    raise UserError(f"unknown world '{name}' in {WORLD_FILE}; choose mini or {OPEN}")


def world_name(model) -> str:
    """The name of the world `model` (a name, a folder, an erasure folder or a ModelRef) belongs to."""
    from ..errors import UserError
    from ..model_ref import ModelRef, resolve
    if isinstance(model, ModelRef):
        base = model.base_path
    else:
        try:
            base = resolve(model).base_path
        except UserError:
            return OPEN
    file = Path(base) / WORLD_FILE
    return json.loads(file.read_text()).get("world", OPEN) if file.exists() else OPEN


def world_for(model: "str | os.PathLike") -> World:
    """The World of `model` (see the module docstring)."""
    return get_world(world_name(model))


def is_minisd(model: "str | os.PathLike") -> bool:
    """Whether `model` belongs to MiniSD's world (the shipped MiniSD, or a model that says so)."""
    return world_name(model) == "mini"
