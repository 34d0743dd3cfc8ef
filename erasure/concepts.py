"""The prompts a trainer uses to express a concept.

On Stable Diffusion the methods train on the concept's own words ("nudity", "Van Gogh"): CLIP's
text encoder gives a word much the same meaning in every sentence, so changing how the UNet
reads "Van Gogh" alone carries over to "a portrait in the style of Van Gogh".

MiniSD's 3-layer text encoder learned only from its own captions and does not generalise that
way. Measured (docs/esd.md): ESD-x trained 400 steps on the bare word "circle" (lr 1e-3) left
"a red circle" and "a picture of a red disk, plain style" drawn as circles 4/4; at lr 3e-3 it
broke the other objects before circles went. So for a concept of its world the trainers use the
world's English captions naming it (every colour and style, the caption templates and the
synonyms: "disk", "round shape"), drawn with a fixed seed. Every prompt of MiniSD's shipped
evaluation sets is excluded, so a method never trains on a prompt it is judged on. French and
German captions are never used: multilingual robustness stays a measurement.

`concept_prompts` settings: `auto` (the above on MiniSD, the concept text elsewhere), `word`
(the concept text only, the papers' recipe), or a .txt (one prompt per line) / .csv (`prompt`
column) file of the user's own prompts.
"""
from __future__ import annotations

import csv
import random
from functools import lru_cache
from pathlib import Path

from .errors import UserError


def _read_prompt_file(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"--concept-prompts: no file at {path}; pass auto, word, or a .txt/.csv prompt file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise UserError(f"--concept-prompts: {path} has no 'prompt' column")
            prompts = [row["prompt"].strip() for row in reader]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"--concept-prompts: {path} holds no prompt")
    return prompts


@lru_cache(maxsize=1)
def _mini_eval_prompts() -> frozenset[str]:
    from .worlds.mini.prompts import PROMPTS_DIR
    out = set()
    for f in PROMPTS_DIR.glob("*.csv"):
        with open(f, newline="", encoding="utf-8") as fh:
            out.update(row["prompt"].strip().lower() for row in csv.DictReader(fh))
    return frozenset(out)


def mini_concept_prompts(concept: str, n: int = 64, seed: int = 0) -> list[str]:
    """MiniSD: the concept word, then n-1 distinct English world captions naming it (an object,
    a colour or a style), none of them an evaluation prompt."""
    from .worlds.mini.world import COLORS, OBJECTS, STYLES, make_caption, parse_caption

    named = {k: v for k, v in parse_caption(concept).items() if v}
    if not named:
        raise UserError(f"MiniSD does not know the concept '{concept}'")
    rng = random.Random(seed)
    held_out = _mini_eval_prompts()
    prompts, seen = [concept], {concept.lower()}
    for _ in range(100 * n):
        if len(prompts) >= n:
            break
        obj = named.get("object") or rng.choice(OBJECTS)
        color = named.get("color") or (rng.choice(COLORS) if rng.random() < 0.9 else None)
        style = named.get("style") or (rng.choice(STYLES) if rng.random() < 0.75 else None)
        caption = make_caption(obj, color, style, "en", rng)
        if caption.lower() not in seen and caption.lower() not in held_out:
            prompts.append(caption)
            seen.add(caption.lower())
    return prompts


def concept_prompts(concept: str, setting: str, is_minisd: bool, n: int = 64, seed: int = 0) -> list[str]:
    """The training prompts for one concept (see the module docstring for `setting`)."""
    if setting == "word" or (setting == "auto" and not is_minisd):
        return [concept]
    if setting == "auto":
        return mini_concept_prompts(concept, n, seed)
    return _read_prompt_file(Path(setting))
