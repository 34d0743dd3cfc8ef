"""What the benchmark (erasure/bench/) reads from the MiniSD world, through `MiniWorld`'s
methods: its held-out evaluation captions (erasure/worlds/mini/prompts/, which no trainer ever
draws from), its caption grammar in other languages, and how its concepts are named in messages.
"""
from __future__ import annotations

import random

from ...prompt_files import read_prompt_table
from .prompts import PROMPTS_DIR
from .world import COLORS, OBJECTS, STYLES, make_caption, parse_caption

FLAG = "MiniSD evaluation set"


def held_out_rows() -> list[dict[str, str]]:
    """Every row of the per-object evaluation CSVs (prompt, object, color, style), objects in the
    world's order: 6 objects x 6 colours x 4 styles."""
    rows: list[dict[str, str]] = []
    for o in OBJECTS:
        rows += read_prompt_table(PROMPTS_DIR / f"object_{o}.csv", FLAG, csv_only=True)
    return rows


def held_out_ordinary_rows() -> list[dict[str, str]]:
    """Every row of the English attribute evaluation CSV (attributes_en.csv: 100 prompts over every
    object, colour and style)."""
    return read_prompt_table(PROMPTS_DIR / "attributes_en.csv", FLAG, csv_only=True)


def caption(attributes: dict[str, str | None], language: str, rng: random.Random) -> str:
    """A caption of (object, colour, style) in `language` (en, fr, de) by the world's grammar."""
    return make_caption(attributes["object"], attributes.get("color") or None, attributes.get("style") or None,
                        language, rng)


def attributes(concept: str) -> list[tuple[str, str]]:
    """Every (label, value) the text names ("red circle" -> [("object", "circle"), ("color", "red")])."""
    return [(k, v) for k, v in parse_caption(concept).items() if v]


def vocabulary() -> str:
    """The world's concepts, for messages: "objects circle, ...; colours red, ...; styles plain, ..."."""
    return f"objects {', '.join(OBJECTS)}; colours {', '.join(COLORS)}; styles {', '.join(STYLES)}"
