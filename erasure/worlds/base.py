"""What every world answers: the one place where knowledge of a model family's concepts lives.

A World knows which concepts its models draw, what each one is called (aliases, synonyms), what
it becomes when erased (the default anchor), the prompts that express it in training, the
prompts whose images must not change, how a judge tells whether an image shows it, and the
per-method defaults its models need. Trainers, evaluation, the benchmark, the attacks, the demo
and the CLI ask the world of their model (`erasure.worlds.world_for`) and never ask which model
it is.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError

# judge(images (B, 3, H, W) in [0, 1]) -> per image: does it show the concept?
ConceptJudge = Callable[[torch.Tensor], list[bool]]


class World:
    """The concepts of one model family. Subclasses: worlds/mini (MiniSD), worlds/open (Stable
    Diffusion and any model of its layout)."""

    name: str = ""
    title: str = ""  # what a person calls the family ("MiniSD", "Stable Diffusion")
    description: str = ""
    # whether the world writes its own captions (MiniSD's grammar): retain sets are then drawn
    # from them; a world without (Stable Diffusion) takes the methods' shipped prompt lists
    captions: bool = False
    # the folder of the world's own prompt sets (suites name them "WORLD:file.csv"), if any
    prompts_dir: Path | None = None
    # the sampler the discrete attack generates with by default (erasure/eval/asr.py SAMPLERS):
    # "pipeline" keeps the model's own scheduler
    attack_sampler: str = "pipeline"
    # the before/after grid `erasure train` draws (erasure/eval/before_after.py): (prompts, None for
    # every comparison prompt; images per prompt). 2 x 1 by default: a full-size model's image is
    # 50 calls of an 860M-parameter UNet
    comparison_size: tuple[int | None, int] = (2, 1)

    # ------------------------------------------------------------------ concepts
    def canonical(self, concept: str) -> str | None:
        """The world's own name of `concept` (an alias resolved), or None when it does not list it."""
        raise NotImplementedError

    def check_concept(self, concept: str) -> None:
        """A one-line UserError when a run cannot erase `concept` in this world."""

    def attribute(self, concept: str) -> tuple[str, str] | None:
        """(label, value) a labelled judge reads for the concept (MiniSD: ("object", "circle")),
        or None when the world's prompts carry no such labels."""
        return None

    def names_concept(self, prompt: str, concept: str) -> bool:
        """Whether `prompt` asks for `concept`."""
        return concept.strip().lower() in prompt.lower()

    def concept_phrases(self, concept: str) -> list[str]:
        """Every phrase that says `concept` (its synonyms), longest first."""
        return [concept]

    # ------------------------------------------------------------------ training prompts
    def concept_prompts(self, concept: str, setting: str, n: int = 64, seed: int = 0) -> list[str]:
        """The prompts that express `concept` in training: `setting` is `auto` (the world's
        choice), `word` (the concept text) or a .txt/.csv prompt file."""
        if setting in ("word", "auto"):
            return [concept]
        from ..prompt_files import read_prompts
        return read_prompts(setting, "--concept-prompts", "auto, word,")

    def default_anchor(self, concept: str) -> str:
        """What a concept becomes when a method needs an anchor and the user named none."""
        raise UserError(f"no default anchor for '{concept}'; say what it should become, e.g. --anchor 'a painting'")

    def anchor_prompts(self, prompts: list[str], concept: str, anchor: str, setting: str) -> list[str]:
        """Row for row, the anchor prompt each forget prompt should turn into."""
        return [anchor] * len(prompts)

    def override_prompts(self, prompts: list[str], concept: str, anchor: str, setting: str) -> list[str]:
        """Row for row, each prompt with the concept's text said as the anchor (the anchor
        alone when the prompt does not say the concept): SFD's override prompts."""
        words = re.compile(re.escape(concept.strip()), re.IGNORECASE)
        return [words.sub(anchor, p) if words.search(p) else anchor for p in prompts]

    def retain_prompts(self, concept: str, anchor: str, n: int = 64, seed: int = 1) -> list[str]:
        """Prompts whose images should not change (SalUn's D_r): the anchor prompt."""
        return [anchor]

    def without_concepts(self, prompts: list[str], concepts: list[str]) -> list[str]:
        """`prompts` less those that ask for any of `concepts` (a retain set for a run erasing them)."""
        return list(prompts)

    def without_concept(self, prompt: str, concept: str) -> str:
        """`prompt` with the concept's words taken out: what it asks for besides the concept."""
        out = prompt
        for w in sorted(set([concept, *self.concept_phrases(concept)]), key=len, reverse=True):
            out = re.sub(rf"\b{re.escape(w)}\b", "", out, flags=re.IGNORECASE)
        return re.sub(r"\s+([,.])", r"\1", re.sub(r"\s{2,}", " ", out)).strip(" ,")

    def siblings(self, concept: str) -> list[str]:
        """The concepts the world draws in its place (MiniSD: the other objects)."""
        raise UserError(f"this needs a world that knows the siblings of '{concept}' (MiniSD's objects, colours and "
                        "styles); the open world lists none")

    def substitute(self, prompt: str, concept: str, other: str) -> str:
        """`prompt` with the concept's words replaced by `other`'s."""
        out = prompt
        for w in sorted(set([concept, *self.concept_phrases(concept)]), key=len, reverse=True):
            out = re.sub(rf"\b{re.escape(w)}\b", other, out, flags=re.IGNORECASE)
        return out

    def with_token(self, prompt: str, concept: str, token: str) -> str:
        """`prompt` with every word of the concept replaced by `token` (a learned placeholder,
        erasure/attacks/inversion.py); a prompt that names none gets the token in front."""
        out = prompt
        for w in sorted(set([concept, *self.concept_phrases(concept)]), key=len, reverse=True):
            out = re.sub(rf"\b{re.escape(w)}\b", token, out, flags=re.IGNORECASE)
        return out if out != prompt else f"{token} {prompt}"

    def concept_images(self, concept: str, n: int, seed: int = 0, folder: str | Path | None = None,
                       size: int = 512) -> tuple[torch.Tensor, list[str]]:
        """n images of the concept no model made, and a caption of each naming it: what an
        attacker fine-tunes on (inversion, relearning). Here: the user's `folder` of images
        (PNG/JPEG/WebP), each resized and centre-cropped to `size`, captioned by the world's
        concept prompts (cycled)."""
        from ..images import read_image_folder
        if folder is None:
            raise UserError(f"the attack needs images of '{concept}': pass --images FOLDER (PNG/JPEG of the concept)")
        images = read_image_folder(folder, size, n)
        captions = self.concept_prompts(concept, "auto", max(len(images), 1), seed)
        return images, [captions[i % len(captions)] for i in range(len(images))]

    def concept_pairs(self, concept: str, prompts: list[str]) -> list[tuple[str, str]]:
        """(with the concept, without it) prompt pairs for Ring-A-Bell's concept vector: each
        prompt beside each sibling in the concept's place."""
        return [(p, self.substitute(p, concept, s)) for p in prompts for s in self.siblings(concept)]

    def sibling_prompts(self, prompts: list[str], concept: str) -> list[str]:
        """Each prompt with the concept replaced by each sibling, distinct."""
        out, seen = [], set()
        for p in prompts:
            for other in self.siblings(concept):
                s = self.substitute(p, concept, other)
                if s.lower() not in seen:
                    out.append(s)
                    seen.add(s.lower())
        return out

    def ordinary_prompts(self, n: int = 256, seed: int = 0) -> list[str] | None:
        """The world's ordinary captions (SFD's remain prompts), or None when it has none."""
        return None

    # ------------------------------------------------------------------ judging and showing
    def concept_judge(self, concept: str, threshold: float | None = None) -> tuple[ConceptJudge, str]:
        """(judge, description) for `concept`; a one-line UserError when no judge knows it."""
        raise NotImplementedError

    def concept_judge_record(self, concept: str, threshold: float | None = None) -> dict | None:
        """The judge `concept_judge` uses, as a harness records it (erasure.harness.judge_file)."""
        return None

    def verdicts(self, images: torch.Tensor) -> list[tuple[str, bool]]:
        """Per image, a verdict a person reads and whether to blur it before showing it."""
        raise NotImplementedError

    def comparison_prompts(self, concepts: list[str]) -> tuple[list[str], list[str]]:
        """(prompts that ask for the concepts, unrelated prompts) for the before/after grid."""
        raise NotImplementedError

    def example_prompts(self, concept: str | None) -> tuple[list[str], list[str]]:
        """(prompts an erasure of `concept` should change, prompts it should keep) for the demo."""
        raise NotImplementedError

    def concept_choices(self) -> list[str]:
        """Concepts to offer in a menu (empty: free text)."""
        return []

    # ------------------------------------------------------------------ per-method defaults
    def method_defaults(self, config_cls: type, method: str = "", concept: str = "") -> dict:
        """Settings `method` takes in this world for `concept` when the user leaves them unset:
        the config class's `world_defaults[world.name]`, then the world's recipe for the
        concept (`concept_recipe`)."""
        out = dict(getattr(config_cls, "world_defaults", {}).get(self.name, {}))
        return out | self.concept_recipe(method, concept)

    def concept_recipe(self, method: str, concept: str) -> dict:
        """The method's settings for `concept` that its paper's code uses (nudity, an artist's
        style, an object class), or {} when the world keeps none."""
        return {}
