"""MiniSD's evaluation prompt sets, generated deterministically and shipped as CSVs.

    python -m erasure.worlds.mini.prompts     # rewrites erasure/worlds/mini/prompts/*.csv
"""
from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

from .world import COLORS, OBJECTS, STYLES, make_caption, parse_caption

PROMPTS_DIR = Path(__file__).parent / "prompts"


def _rows(combos, language: str, rng: random.Random) -> list[dict]:
    rows = []
    for o, c, s in combos:
        prompt = make_caption(o, c, s, language, rng)
        assert parse_caption(prompt) == {"object": o, "color": c, "style": s}, prompt
        rows.append({"prompt": prompt, "object": o, "color": c, "style": s})
    return rows


def make_sets(seed: int = 2024) -> dict[str, list[dict]]:
    """attributes_en: 100 English prompts over objects x colours x styles (every value used,
    templates and synonyms varied); attributes_multilingual: 24 French + 24 German prompts;
    per_object/<object>: 24 prompts each (6 colours x 4 styles) for erasure side-effect tables."""
    rng = random.Random(seed)
    combos = list(itertools.product(OBJECTS, COLORS, STYLES))
    rng.shuffle(combos)
    sets = {"attributes_en": _rows(combos[:100], "en", rng)}
    rng.shuffle(combos)
    sets["attributes_multilingual"] = _rows(combos[:24], "fr", rng) + _rows(combos[24:48], "de", rng)
    for o in OBJECTS:
        sets[f"object_{o}"] = _rows([(o, c, s) for c in COLORS for s in STYLES], "en", rng)
    return sets


def write_sets(out: Path = PROMPTS_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in make_sets().items():
        with open(out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["prompt", "object", "color", "style"])
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    write_sets()
