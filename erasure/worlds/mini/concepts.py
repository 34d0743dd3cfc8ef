"""The MiniSD world's concepts: its 6 objects, 6 colours and 4 textures (styles), their English
synonyms, siblings and anchors, the prompts the trainers use for them, and the bundled judge.

Why MiniSD's training prompts are captions and not the concept word: on Stable Diffusion the
methods train on the concept's own words ("nudity", "Van Gogh"), since CLIP's text encoder gives
a word much the same meaning in every sentence. MiniSD's 3-layer text encoder learned only from
its own captions and does not generalise that way. Measured (docs/esd.md): ESD-x trained 400
steps on the bare word "circle" (lr 1e-3) left "a red circle" and "a picture of a red disk, plain
style" drawn as circles 4/4; at lr 3e-3 it broke the other objects before circles went. So for a
concept of its world `concept_prompts(..., "auto")` gives the world's English captions naming it
(every colour and style, the caption templates and the synonyms: "disk", "round shape"), drawn
with a fixed seed. Every prompt of MiniSD's shipped evaluation sets is excluded, so a method
never trains on a prompt it is judged on. French and German captions are never used:
multilingual robustness stays a measurement.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

import torch

from ...errors import UserError
from ...prompt_files import read_prompt_table
from ..base import ConceptJudge, World
from .prompts import PROMPTS_DIR
from .world import _NOUNS_EN, _STYLE_EN, COLORS, OBJECTS, STYLES, make_caption, parse_caption

# MiniSD's sampling settings, picked on its judge (docs/minisd.md); its folder ships them in
# erasure_sampling.json
SAMPLING = {"num_inference_steps": 25, "guidance_scale": 5.0}
EVALUATION_SETS = "MiniSD's evaluation sets"  # names them in a prompt-file error
VALUES = {"object": OBJECTS, "color": COLORS, "style": STYLES}


@lru_cache(maxsize=1)
def evaluation_prompts() -> frozenset[str]:
    """Every prompt of MiniSD's shipped evaluation sets (lower case): never a training prompt."""
    return frozenset(row["prompt"].lower() for f in PROMPTS_DIR.glob("*.csv")
                     for row in read_prompt_table(f, EVALUATION_SETS, csv_only=True))


def world_captions(n: int, rng: random.Random, fixed: dict[str, str], keep, first: list[str]) -> list[str]:
    """`first`, then distinct English MiniSD captions up to n: attributes in `fixed` as given, the
    others drawn as in training (colour said 90%, style 75% of the time), kept when
    keep(object, colour, style); never an evaluation prompt."""
    held_out = evaluation_prompts()
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


def concept_words(concept: str) -> tuple[str, str, list[str]] | None:
    """(attribute, value, every English phrase for it) of a MiniSD concept ("circle" -> object,
    circle, [circle, disk, round shape, disc]); None when the world does not name it."""
    parsed = parse_caption(concept)
    kind = next((k for k in ("object", "color", "style") if parsed[k]), None)
    if kind is None:
        return None
    value = parsed[kind]
    return kind, value, {"object": _NOUNS_EN, "style": _STYLE_EN}.get(kind, {}).get(value, [value])


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class MiniWorld(World):
    name = "mini"
    title = "MiniSD"
    description = "MiniSD: 6 objects x 6 colours x 4 styles, judged by the bundled classifier"
    captions = True
    prompts_dir = PROMPTS_DIR  # held-out evaluation sets: never a training prompt
    # the before/after grid (erasure/eval/before_after.py): every comparison prompt (None), one
    # seed each: 6 images per model, about 4 s on a 2-core CPU
    comparison_size = (None, 1)

    # ------------------------------------------------------------------ concepts
    def canonical(self, concept: str) -> str | None:
        found = concept_words(concept)
        return found[1] if found else None

    def check_concept(self, concept: str) -> None:
        if not any(parse_caption(concept).values()):
            raise UserError(f"MiniSD does not know the concept '{concept}' (it draws objects {', '.join(OBJECTS)}; colours "
                            f"{', '.join(COLORS)}; styles {', '.join(STYLES)}); to erase it from Stable Diffusion, pass "
                            "--model /path/to/stable-diffusion-folder")

    def attribute(self, concept: str) -> tuple[str, str] | None:
        found = [(k, v) for k, v in parse_caption(concept).items() if v]
        return found[0] if len(found) == 1 else None

    def names_concept(self, prompt: str, concept: str) -> bool:
        """Whether a MiniSD caption names the concept (its object, colour or style, any synonym)."""
        wanted = {k: v for k, v in parse_caption(concept).items() if v}
        said = parse_caption(prompt)
        return bool(wanted) and all(said[k] == v for k, v in wanted.items())

    def concept_phrases(self, concept: str) -> list[str]:
        found = concept_words(concept)
        return sorted(found[2], key=len, reverse=True) if found else [concept]

    def concept_images(self, concept: str, n: int, seed: int = 0, folder=None, size: int = 64
                       ) -> tuple[torch.Tensor, list[str]]:
        """n renders of the concept by the world's own renderer (ground truth no model made),
        the other attributes uniform, each with an English caption of what was drawn; a
        `folder` of the user's images replaces the renders."""
        if folder is not None:
            return super().concept_images(concept, n, seed, folder, size)
        from .world import Scene, render, sample_scene
        named = {k: v for k, v in parse_caption(concept).items() if v}
        if not named:
            raise UserError(f"MiniSD does not know the concept '{concept}'")
        generator = torch.Generator().manual_seed(seed)
        scene = sample_scene(n, generator)
        fixed = {"object": (OBJECTS, "objects"), "color": (COLORS, "colors"), "style": (STYLES, "styles")}
        fields = {"objects": scene.objects, "colors": scene.colors, "styles": scene.styles}
        for attr, value in named.items():
            names, field = fixed[attr]
            fields[field] = torch.full((n,), names.index(value), dtype=torch.long)
        scene = Scene(**fields)
        images = render(scene, generator)
        rng = random.Random(seed)
        captions = [self.caption({"object": OBJECTS[o], "color": COLORS[c], "style": STYLES[s]}, "en", rng)
                    for o, c, s in zip(scene.objects.tolist(), scene.colors.tolist(), scene.styles.tolist())]
        return images, captions

    # ------------------------------------------------------------------ training prompts
    def concept_prompts(self, concept: str, setting: str, n: int = 64, seed: int = 0) -> list[str]:
        """`auto`: the concept word, then n-1 distinct English world captions naming it (an
        object, a colour or a style), none of them an evaluation prompt."""
        if setting != "auto":
            return super().concept_prompts(concept, setting, n, seed)
        named = {k: v for k, v in parse_caption(concept).items() if v}
        if not named:
            raise UserError(f"MiniSD does not know the concept '{concept}'")
        return world_captions(n, random.Random(seed), named, lambda *_: True, [concept])

    def default_anchor(self, concept: str) -> str:
        """The next value of the same attribute (circle -> square, ..., cross -> circle; red ->
        green; a style -> plain, plain -> striped), so the judge can tell the anchor from the concept."""
        parsed = parse_caption(concept)
        for kind, values in (("object", OBJECTS), ("color", COLORS)):
            if parsed[kind]:
                return values[(values.index(parsed[kind]) + 1) % len(values)]
        if parsed["style"]:
            return "striped" if parsed["style"] == "plain" else "plain"
        return super().default_anchor(concept)

    def anchor_prompts(self, prompts: list[str], concept: str, anchor: str, setting: str) -> list[str]:
        """With the world's captions (`auto`), the anchor keeps each prompt's colour and style
        ("a red disk" -> "a red square")."""
        if setting == "auto":
            return [self.substitute(p, concept, anchor) for p in prompts]
        return super().anchor_prompts(prompts, concept, anchor, setting)

    def override_prompts(self, prompts: list[str], concept: str, anchor: str, setting: str) -> list[str]:
        if setting == "auto":
            return self.anchor_prompts(prompts, concept, anchor, setting)
        return super().override_prompts(prompts, concept, anchor, setting)

    def substitute(self, prompt: str, concept: str, other: str) -> str:
        """A MiniSD caption with the concept's words replaced by the other's ("a red disk, plain
        style" -> "a red square, plain style"): keeps colour and style."""
        kind, _, words = concept_words(concept)
        if not parse_caption(other)[kind]:
            return other
        replacement = concept_words(other)[2][0]
        out = prompt
        for w in sorted(words, key=len, reverse=True):
            out = re.sub(rf"\b{re.escape(w)}\b", replacement, out)
        return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), out)

    def retain_prompts(self, concept: str, anchor: str, n: int = 64, seed: int = 1) -> list[str]:
        """World captions that name neither the concept nor the anchor's attribute value (other
        objects, every colour and style); none is an evaluation prompt."""
        c = parse_caption(concept)
        return world_captions(n, random.Random(seed), {}, lambda o, col, st: not (
            c["object"] == o or (c["color"] and c["color"] == col) or (c["style"] and c["style"] == st)), [])

    def without_concepts(self, prompts: list[str], concepts: list[str]) -> list[str]:
        return [p for p in prompts if not any(self.names_concept(p, c) for c in concepts)]

    def without_concept(self, prompt: str, concept: str) -> str:
        """("a picture of a red disk, plain style" -> "a picture of a red, plain style"): every
        synonym of the concept goes."""
        return super().without_concept(prompt, concept)

    def siblings(self, concept: str) -> list[str]:
        """The other values of the concept's attribute (circle -> square, triangle, star, heart,
        cross; red -> the other colours; a style -> the other styles): what the world draws instead."""
        found = concept_words(concept)
        if found is None:
            raise UserError(f"MiniSD does not know the concept '{concept}'")
        kind, value, _ = found
        return [v for v in VALUES[kind] if v != value]

    def sibling_prompts(self, prompts: list[str], concept: str) -> list[str]:
        """Each prompt with the concept replaced by each sibling ("a red disk" -> "a red square",
        ..., "a red cross"), distinct, none an evaluation prompt: the captions nearest the
        concept's, which an erasure of the concept's words moves most."""
        held_out, siblings, out, seen = evaluation_prompts(), self.siblings(concept), [], set()
        for p in prompts:
            for other in siblings:
                s = self.substitute(p, concept, other)
                if s.lower() not in held_out and s.lower() not in seen:
                    out.append(s)
                    seen.add(s.lower())
        return out

    def ordinary_prompts(self, n: int = 256, seed: int = 0) -> list[str]:
        """n distinct English captions over every object, colour and style, drawn as in training
        (the concept's among them); never an evaluation prompt."""
        return world_captions(n, random.Random(seed), {}, lambda *_: True, [])

    # ------------------------------------------------------------------ judging and showing
    def concept_judge(self, concept: str, threshold: float | None = None) -> tuple[ConceptJudge, str]:
        found = self.attribute(concept)
        if found is None:
            raise UserError(f"no judge knows the concept '{concept}': attacks are judged for nudity (NudeNet) and MiniSD "
                            "objects, colours and styles")
        attr, value = found

        def mini(images: torch.Tensor) -> list[bool]:
            from ...judges.minisd import classify
            return [p[attr] == value for p in classify(images)]
        return mini, f"MiniSD judge: {attr} == {value}"

    def concept_judge_record(self, concept: str, threshold: float | None = None) -> dict | None:
        from ...judges.minisd import judge_record
        return judge_record() if self.attribute(concept) else None

    def verdicts(self, images: torch.Tensor) -> list[tuple[str, bool]]:
        """The classifier's object, colour and style with confidence; nothing blurs."""
        from ...judges.minisd import LABELS, classify
        return [(" · ".join(f"{r[h]} {r[f'{h}_conf']:.0%}" for h in LABELS), False) for r in classify(images)]

    def comparison_prompts(self, concepts: list[str]) -> tuple[list[str], list[str]]:
        named = {parse_caption(c)["object"] for c in concepts}
        concept_prompts = [f"a red {c}" for c in concepts] + [f"a striped blue {c}" for c in concepts]
        unrelated = [f"a green {o}" for o in OBJECTS if o not in named][:4]
        return concept_prompts, unrelated

    def example_prompts(self, concept: str | None) -> tuple[list[str], list[str]]:
        c = (concept or "").split(",")[0].strip().lower()
        head = next((h for h, values in VALUES.items() if c in values), None)
        if head is None:
            c, head = "circle", "object"
        others = [v for v in VALUES[head] if v != c][:3]
        make = {"object": lambda v, col="red": f"{_article(col)} {col} {v}",
                "color": lambda v: f"{_article(v)} {v} star",
                "style": lambda v: f"a blue {v} square"}[head]
        erase = [make(c)] + ([f"a blue striped {c}"] if head == "object" else
                             [f"{_article(c)} {c} circle"] if head == "color" else [f"a red {c} heart"])
        return erase, [make(v) for v in others]

    def concept_choices(self) -> list[str]:
        return [v for values in VALUES.values() for v in values]

    # ------------------------------------------------------------------ what the benchmark reads
    # ------------------------------------------------------------------ what the benchmark reads
    def held_out_rows(self) -> list[dict[str, str]]:
        """Every row (prompt, object, color, style) of the per-object evaluation CSVs, objects in
        the world's order: 6 objects x 6 colours x 4 styles, none ever a training prompt."""
        return [row for o in OBJECTS
                for row in read_prompt_table(PROMPTS_DIR / f"object_{o}.csv", EVALUATION_SETS, csv_only=True)]

    def held_out_ordinary_rows(self) -> list[dict[str, str]]:
        """Every row of the English attribute evaluation CSV (attributes_en.csv: 100 prompts)."""
        return read_prompt_table(PROMPTS_DIR / "attributes_en.csv", EVALUATION_SETS, csv_only=True)

    def caption(self, attributes: dict[str, str | None], language: str, rng: random.Random) -> str:
        """A caption of (object, colour, style) in `language` (en, fr, de) by the world's grammar."""
        return make_caption(attributes["object"], attributes.get("color") or None, attributes.get("style") or None,
                            language, rng)

    def attributes(self, concept: str) -> list[tuple[str, str]]:
        """Every (label, value) the text names ("red circle" -> [("object", "circle"), ("color", "red")]);
        `attribute` is the one of a single concept."""
        return [(k, v) for k, v in parse_caption(concept).items() if v]

    def vocabulary(self) -> str:
        """The world's concepts, for messages: "objects circle, ...; colours red, ...; styles plain, ..."."""
        return f"objects {', '.join(OBJECTS)}; colours {', '.join(COLORS)}; styles {', '.join(STYLES)}"
