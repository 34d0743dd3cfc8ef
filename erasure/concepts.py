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


def _read_prompt_file(path: Path, flag: str = "--concept-prompts", choices: str = "auto, word,") -> list[str]:
    """Prompts of a .txt (one per line) or .csv (`prompt` column) file; errors name `flag`."""
    if not path.is_file():
        raise UserError(f"{flag}: no file at {path}; pass {choices} or a .txt/.csv prompt file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise UserError(f"{flag}: {path} has no 'prompt' column")
            prompts = [row["prompt"].strip() for row in reader]
    else:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise UserError(f"{flag}: {path} holds no prompt")
    return prompts


@lru_cache(maxsize=1)
def _mini_eval_prompts() -> frozenset[str]:
    from .worlds.mini.prompts import PROMPTS_DIR
    out = set()
    for f in PROMPTS_DIR.glob("*.csv"):
        with open(f, newline="", encoding="utf-8") as fh:
            out.update(row["prompt"].strip().lower() for row in csv.DictReader(fh))
    return frozenset(out)


def _world_captions(n: int, rng: random.Random, fixed: dict[str, str], keep, first: list[str]) -> list[str]:
    """`first`, then distinct English MiniSD captions up to n: attributes in `fixed` as given, the
    others drawn as in training (colour said 90%, style 75% of the time), kept when
    keep(object, colour, style); never an evaluation prompt."""
    from .worlds.mini.world import COLORS, OBJECTS, STYLES, make_caption

    held_out = _mini_eval_prompts()
    prompts, seen = list(first), {p.lower() for p in first}
    for _ in range(100 * n):
        if len(prompts) >= n:
            break
        obj = fixed.get("object") or rng.choice(OBJECTS)
        color = fixed.get("color") or (rng.choice(COLORS) if rng.random() < 0.9 else None)
        style = fixed.get("style") or (rng.choice(STYLES) if rng.random() < 0.75 else None)
        if not keep(obj, color, style):
            continue
        caption = make_caption(obj, color, style, "en", rng)
        if caption.lower() not in seen and caption.lower() not in held_out:
            prompts.append(caption)
            seen.add(caption.lower())
    return prompts


def _mini_concept_words(concept: str) -> tuple[str, str, list[str]] | None:
    """(attribute, value, every English phrase for it) of a MiniSD concept ("circle" -> object,
    circle, [circle, disk, round shape, disc]); None when the world does not name it."""
    from .worlds.mini.world import _NOUNS_EN, _STYLE_EN, parse_caption

    parsed = parse_caption(concept)
    kind = next((k for k in ("object", "color", "style") if parsed[k]), None)
    if kind is None:
        return None
    value = parsed[kind]
    return kind, value, {"object": _NOUNS_EN, "style": _STYLE_EN}.get(kind, {}).get(value, [value])


def mini_concept_prompts(concept: str, n: int = 64, seed: int = 0) -> list[str]:
    """MiniSD: the concept word, then n-1 distinct English world captions naming it (an object,
    a colour or a style), none of them an evaluation prompt."""
    from .worlds.mini.world import parse_caption

    named = {k: v for k, v in parse_caption(concept).items() if v}
    if not named:
        raise UserError(f"MiniSD does not know the concept '{concept}'")
    return _world_captions(n, random.Random(seed), named, lambda *_: True, [concept])


def concept_prompts(concept: str, setting: str, is_minisd: bool, n: int = 64, seed: int = 0) -> list[str]:
    """The training prompts for one concept (see the module docstring for `setting`)."""
    if setting == "word" or (setting == "auto" and not is_minisd):
        return [concept]
    if setting == "auto":
        return mini_concept_prompts(concept, n, seed)
    return _read_prompt_file(Path(setting))


# ----------------------------------------------------------------------------- anchors and retain prompts

NUDITY_ANCHOR = "a person wearing clothes"


def default_anchor(concept: str, is_minisd: bool) -> str:
    """What a concept becomes when a method needs an anchor and the user named none.

    MiniSD: the next value of the same attribute (circle -> square, ..., cross -> circle; red ->
    green; a style -> plain, plain -> striped), so the judge can tell the anchor from the
    concept. Stable Diffusion: "nudity" -> "a person wearing clothes" (SalUn's and DoCo's choice);
    anything else needs --anchor."""
    if is_minisd:
        from .worlds.mini.world import COLORS, OBJECTS, parse_caption
        parsed = parse_caption(concept)
        for kind, values in (("object", OBJECTS), ("color", COLORS)):
            if parsed[kind]:
                return values[(values.index(parsed[kind]) + 1) % len(values)]
        if parsed["style"]:
            return "striped" if parsed["style"] == "plain" else "plain"
    if concept.strip().lower() in ("nudity", "nude", "naked", "nsfw"):
        return NUDITY_ANCHOR
    raise UserError(f"no default anchor for '{concept}'; say what it should become, e.g. --anchor 'a painting'")


def mini_substitute(prompt: str, concept: str, anchor: str) -> str:
    """A MiniSD caption with the concept's words replaced by the anchor's ("a red disk, plain
    style" -> "a red square, plain style"): the anchor prompt that keeps colour and style."""
    import re

    from .worlds.mini.world import parse_caption

    kind, _, words = _mini_concept_words(concept)
    if not parse_caption(anchor)[kind]:
        return anchor
    replacement = _mini_concept_words(anchor)[2][0]
    out = prompt
    for w in sorted(words, key=len, reverse=True):
        out = re.sub(rf"\b{re.escape(w)}\b", replacement, out)
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), out)


def retain_prompts(concept: str, anchor: str, is_minisd: bool, n: int = 64, seed: int = 1) -> list[str]:
    """Prompts whose images should not change. MiniSD: world captions that name neither the
    concept nor the anchor's attribute value (other objects, every colour and style); none is an
    evaluation prompt. Stable Diffusion: the anchor prompt (SalUn's D_r)."""
    if not is_minisd:
        return [anchor]
    from .worlds.mini.world import parse_caption

    c = parse_caption(concept)
    return _world_captions(n, random.Random(seed), {}, lambda o, col, st: not (
        c["object"] == o or (c["color"] and c["color"] == col) or (c["style"] and c["style"] == st)), [])


def mini_names_concept(prompt: str, concept: str) -> bool:
    """Whether a MiniSD caption names the concept (its object, colour or style, any synonym)."""
    from .worlds.mini.world import parse_caption

    wanted = {k: v for k, v in parse_caption(concept).items() if v}
    said = parse_caption(prompt)
    return bool(wanted) and all(said[k] == v for k, v in wanted.items())


def mini_sibling_prompts(prompts: list[str], concept: str) -> list[str]:
    """Each prompt with the concept replaced by each of its siblings ("a red disk" -> "a red
    square", ..., "a red cross"), distinct, none an evaluation prompt: the captions nearest the
    concept's, which an erasure of the concept's words moves most."""
    held_out, siblings, out, seen = _mini_eval_prompts(), mini_siblings(concept), [], set()
    for p in prompts:
        for other in siblings:
            s = mini_substitute(p, concept, other)
            if s.lower() not in held_out and s.lower() not in seen:
                out.append(s)
                seen.add(s.lower())
    return out


def mini_world_captions(n: int = 256, seed: int = 0) -> list[str]:
    """n distinct English MiniSD captions over every object, colour and style, drawn as in
    training (the concept's among them); never an evaluation prompt. SFD's remain prompts on
    MiniSD: the world's ordinary captions, whatever is being forgotten."""
    return _world_captions(n, random.Random(seed), {}, lambda *_: True, [])


def mini_siblings(concept: str) -> list[str]:
    """The other values of a MiniSD concept's attribute (circle -> square, triangle, star, heart,
    cross; red -> the other colours; a style -> the other styles): what the world draws instead."""
    from .worlds.mini.world import COLORS, OBJECTS, STYLES

    found = _mini_concept_words(concept)
    if found is None:
        raise UserError(f"MiniSD does not know the concept '{concept}'")
    kind, value, _ = found
    return [v for v in {"object": OBJECTS, "color": COLORS, "style": STYLES}[kind] if v != value]


def without_concept(prompt: str, concept: str, is_minisd: bool) -> str:
    """`prompt` with the concept's words taken out ("a picture of a red disk, plain style" ->
    "a picture of a red, plain style"): what the prompt asks for besides the concept. On
    MiniSD every synonym of the concept goes; elsewhere the concept text itself."""
    import re

    words = [concept]
    found = _mini_concept_words(concept) if is_minisd else None
    if found:
        words += found[2]
    out = prompt
    for w in sorted(set(words), key=len, reverse=True):
        out = re.sub(rf"\b{re.escape(w)}\b", "", out, flags=re.IGNORECASE)
    out = re.sub(r"\s+([,.])", r"\1", re.sub(r"\s{2,}", " ", out)).strip(" ,")
    return out
