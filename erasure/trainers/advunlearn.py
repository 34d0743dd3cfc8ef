"""AdvUnlearn: defensive unlearning with adversarial training (Zhang et al., NeurIPS 2024).

A bi-level problem on the *text encoder* (the UNet never changes):

  inner (after `attack_warmup` iterations): a soft-prompt attack finds k token embeddings adv
      that make the current model regenerate the concept (erasure/attacks/soft.py):
          min_adv E_(x_t, t) MSE(eps(x_t, t, E_theta(adv + c_f)), eps*(x_t, t, c_f))
      each of its steps on a fresh timestep t and partial-DDIM x_t (`--attack-draw fresh`, the
      reference: AdvUnlearn train-scripts/utils/attack_util.py:175-188), drawn as the outer step
      draws its own.
  outer: the ESD loss (Eq. 3 of ESD) evaluated on the adversarial prompt, plus the utility
      retain term over a batch of retain prompts c_r (Eq. 5 of AdvUnlearn):
          MSE(eps(x_t, t, E_theta(adv + c_f)), eps*(c_0) - eta (eps*(c_f) - eps*(c_0)))
          + lambda * MSE(eps(z_r, t, E_theta(c_r)), eps*(z_r, t, E*(c_r)))

x_t comes from ESD's partial DDIM sampling (this class extends the ESD trainer and shares its
trajectory cache, concept prompts and context baseline); z_r from the same sampling under the
retain prompts: every `refresh_every` iterations `retain_trajectories` distinct retain prompts
are drawn and sampled, and each iteration's `retain_batch` comes from them.

Defaults are the reference's Stable Diffusion recipe (its README command; docs/advunlearn.md
holds the table with file and line of each): k = 1 adversarial token, 30 attack steps at lr 1e-3
from random vocabulary tokens, 200 warm-up iterations, lambda 0.3 (the catalogue sets 0.5 for
styles and objects, the maintainers' value), 5 retain prompts per step from the reference's 243
object prompts (erasure/data/prompts/advunlearn_retain.csv: "a photo of {object}", no person
and no body part; the same set for every concept), 1000 iterations at lr 1e-5, the text encoder's
transformer layers and final norm trained (embeddings frozen; `--layers` picks a subset, e.g.
"0" or "0-2", for AdvUnlearn's layer-wise variants). `--fast-attack` is "Fast AT": signed-
gradient attack steps. `--grad-accum N` sums N micro-batches, each with its own attack.

The result holds only text-encoder tensors: `erasure export-text-encoder` writes a standard
CLIPTextModel folder that plugs into any compatible pipeline as `text_encoder=`.

On MiniSD the retain set is its captions of the other objects (the world's, erasure/worlds/) and,
by MiniSD's default (`--retain-siblings`), each forget prompt with the concept replaced by each
sibling ("a red disk" -> "a red cross"), none naming a concept being erased. Why
(docs/advunlearn.md, measured): the text encoder erases "circle" by moving it toward the sibling
shapes, and without those exact neighbours in the retain set the cross prompts moved with it.

Where we differ, deliberately:
  * The retain cache: the reference samples a fresh trajectory per retain prompt every iteration;
    the cache is the same speed-up as ESD's, and its width is an option because it decides how
    much of the retain set a run ever sees (8 trajectories x 8 refreshes = 64 of MiniSD's 332
    prompts, a different 64 per seed). The attack's draws come from ESD's trajectory cache too;
    `--refresh-every 1` makes every draw, the attack's included, a fresh partial trajectory.
  * The attack zeroes its gradients every step; the reference never zeroes them (erasure/attacks/soft.py).
  * MiniSD's measured recipe attacks the outer step's own draw (`--attack-draw outer`: every
    attack step on the (x_t, t) the outer loss is then taken on, as in classical adversarial
    training); the MiniSD tables of docs/advunlearn.md are measured with it.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attacks.soft import soft_prompt_attack_on_draws
from ..attacks.text import encode_with_prefix, encode_with_slots
from ..config import doc
from ..errors import UserError
from ..prompt_files import SHIPPED_PROMPTS, read_prompts
from ..registry import register_method
from .esd import ESDConfig, ESDTrainer

# the reference's retain set (its data/prompts/train/coco_object_retain.csv, unchanged): the default on Stable Diffusion
REFERENCE_RETAIN = SHIPPED_PROMPTS / "advunlearn_retain.csv"
ATTACK_DRAWS = ("fresh", "outer")
ATTACK_PLACES = ("prefix", "concept", "both")
# what marks the concept's place in a forget prompt while it is split around the adversarial slots
SLOT_MARK = "<adversarial-slot>"


def parse_layers(spec: str) -> set[int] | None:
    """'all' -> None; '0' / '0-2' / '0,3' -> layer indices."""
    if spec.strip().lower() == "all":
        return None
    out: set[int] = set()
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UserError(f"--layers must be 'all' or indices like 0, 0-2, 0,3 (got '{spec}')")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out |= set(range(lo, hi + 1))
    return out


@contextlib.contextmanager
def weights_frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block the trained weights need no gradient (the inner attack's passes build
    no graph through them, as the reference's attack runs with the text encoder frozen)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class AdvUnlearnConfig(ESDConfig):
    target: str = doc("weights that train (AdvUnlearn: the text encoder, embeddings frozen)", default="text-encoder")
    steps: int = doc("outer iterations (paper: 1000)", default=1000)
    lr: float = doc("Adam learning rate of the text encoder (paper: 1e-5)", default=1e-5)
    layers: str = doc("text-encoder layers that train: all (with the final norm) or indices, e.g. 0 or 0-2", default="all")
    adv_tokens: int = doc("adversarial tokens k of the inner attack (paper: 1)", default=1)
    attack_steps: int = doc("inner attack steps (paper: 30)", default=30)
    attack_lr: float = doc("inner attack step size (paper: 1e-3)", default=1e-3)
    attack_warmup: int = doc("iterations before the inner attack starts (paper: 200)", default=200)
    fast_attack: bool = doc("Fast AT: signed-gradient attack steps", default=False)
    attack_place: str = doc("where the inner attack's k vectors go: prefix (after the start token; the reference's "
                            "prefix_k), concept (in place of the concept's words, where concept inversion puts its "
                            "learned token) or both (one of the two, drawn at each outer step)", default="prefix")
    attack_draw: str = doc("what each inner attack step is taken on: fresh (a new timestep and x_t every step, drawn as "
                           "the outer step draws its own; the reference) or outer (every step on the outer step's x_t "
                           "and t)", default="fresh")
    retain_weight: float = doc("lambda of the utility retain term (paper: 0.3)", default=0.3)
    retain_batch: int = doc("retain prompts per iteration (paper: 5)", default=5)
    retain_trajectories: int = doc("distinct retain prompts whose trajectories are sampled at each refresh (every "
                                   "--refresh-every steps); each iteration's retain batch is drawn from them", default=8)
    retain_captions: int = doc("MiniSD: how many other-object captions form the retain set (not used with "
                               "--retain-prompts-file or on Stable Diffusion)", default=64)
    retain_siblings: bool = doc("MiniSD: add each forget prompt with the concept replaced by each sibling "
                                "(a red disk -> a red square, ..., a red cross) to the retain set (also to a "
                                "--retain-prompts-file)", default=False)
    retain_prompts_file: str = doc("retain prompts, one per line or a CSV 'prompt' column (default: the reference's "
                                   "243 object prompts on SD, MiniSD's other-object captions on MiniSD)", default="")

    # MiniSD (measured, docs/advunlearn.md): at lr 1e-3 every prompt broke; at lr 1e-4 (retain weight
    # 3) circle went but square and triangle lost 0.06-0.07; lr 5e-5 erases circle as fully and
    # keeps every other object within 0.02. The inner attack matches the discrete attack's 5 prefix
    # tokens (with 1 token and 10 steps the attack broke 11 of 24 prompts); against it, only a retain
    # set holding the forget prompts' sibling captions kept the cross object that erased circles drift
    # to (retain weight 3 with 64 captions: cross 0.312; 256: 0.844; with siblings: 0.938). 64 retain
    # trajectories per refresh, not 8: with 8 a run only ever saw 64 of the 332 retain prompts, a
    # different 64 per seed, and cross ranged 0.896-0.969 over seeds 0-2; with 64 (retain weight
    # 3.75; at 3.5 cross was 0.948 at seeds 0 and 1) cross is 0.969, 0.990, 0.979 at seeds 0-2, and the
    # default-budget attack breaks 8 and 9 of 24 prompts at seeds 0 and 1 (ESD-x: 18). All of it is
    # measured with the attack on the outer step's own draw (attack_draw "outer")
    world_defaults: ClassVar[dict] = {"mini": {**ESDConfig.world_defaults["mini"], "steps": 400, "lr": 5e-5,
                                               "retain_weight": 3.75, "attack_warmup": 100, "adv_tokens": 5,
                                               "attack_steps": 20, "attack_lr": 1e-2, "retain_batch": 16,
                                               "retain_siblings": True, "retain_trajectories": 64,
                                               "attack_draw": "outer"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_layers(self.layers)
        for name in ("adv_tokens", "attack_steps", "retain_batch", "retain_trajectories", "retain_captions"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.attack_draw not in ATTACK_DRAWS:
            raise UserError(f"--attack-draw must be fresh or outer (got '{self.attack_draw}')")
        if self.attack_place not in ATTACK_PLACES:
            raise UserError(f"--attack-place must be prefix, concept or both (got '{self.attack_place}')")
        if self.attack_warmup < 0 or self.retain_weight < 0:
            raise UserError("--attack-warmup and --retain-weight must be >= 0")
        if self.erase_from:
            raise UserError("advunlearn does not support --erase-from (its adversarial prompt is built on the forget "
                            "prompt); use esd-x/esd-u for that")


class AdvUnlearnTrainer(ESDTrainer):
    config_cls = AdvUnlearnConfig

    def select_trainable(self, models):
        chosen = super().select_trainable(models)
        keep = parse_layers(self.config.layers)
        if keep is None:
            return chosen
        n_layers = self.text_encoder.config.num_hidden_layers
        if max(keep) >= n_layers:
            raise UserError(f"--layers {self.config.layers}: the text encoder has layers 0-{n_layers - 1}")
        pattern = re.compile(r"\.layers\.(\d+)\.")
        return {k: p for k, p in chosen.items() if (m := pattern.search(k)) and int(m.group(1)) in keep}

    def setup(self) -> None:
        super().setup()  # ESD: frozen UNet (= the UNet, which never trains), concept prompts, c_0, trajectories
        cfg: AdvUnlearnConfig = self.config
        if cfg.retain_prompts_file:
            self.retain_set = read_prompts(cfg.retain_prompts_file, "--retain-prompts-file")
        elif self.world.captions:  # the world's own captions of everything else (MiniSD)
            self.retain_set = [p for c in cfg.concepts for p in self.retain_prompts(c, cfg.retain_captions)]
        else:  # the reference's object prompts, the same for every concept (docs/advunlearn.md)
            self.retain_set = self.without_run_concepts(read_prompts(REFERENCE_RETAIN, "--retain-prompts-file"))
        if cfg.retain_siblings:
            if not self.world.captions:
                raise UserError("--retain-siblings needs MiniSD's world (it knows each concept's siblings); on Stable "
                                "Diffusion list the prompts to keep in --retain-prompts-file")
            near = [p for k, c in enumerate(cfg.concepts)
                    for p in self.world.sibling_prompts(self.forget_prompt_sets[k], c)]
            near = self.without_run_concepts(near)  # erasing circle and square together: circle's siblings are squares
            self.retain_set += [p for p in dict.fromkeys(near) if p not in self.retain_set]
        # the concept place's split of each forget prompt, once (the inner attack encodes them every step)
        self.concept_splits = [{p: self.split_around_concept(p, c) for p in self.forget_prompt_sets[k]}
                               for k, c in enumerate(cfg.concepts)]
        # θ*'s embeddings of the retain prompts (setup runs before any step, also on resume)
        self.c_retain_frozen = self.embed(self.retain_set)
        self.retain_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.retain_born = -1

    def encode_trained(self, prompt_ids: torch.Tensor, k: int, adversarial: torch.Tensor | None,
                       place: str = "prefix") -> torch.Tensor:
        """The trained text encoder's embedding of forget prompts (with the adversarial vectors in `place`)."""
        prompts = [self.forget_prompt_sets[k][i] for i in prompt_ids.tolist()]
        if adversarial is None:
            return self.embed(prompts, grad=True)
        return self.adversarial_encoder(k, place)(prompts, adversarial)

    def adversarial_encoder(self, k: int, place: str):
        """(prompts, vectors) -> text-encoder states with the vectors in front (`prefix`) or in
        place of concept k's words (`concept`; a prompt that names it twice keeps the first place
        and loses the second, a prompt that names it not has the vectors in front)."""
        if place == "prefix":
            return lambda prompts, vectors: encode_with_prefix(self.tokenizer, self.text_encoder, prompts, vectors)
        split = self.concept_splits[k]

        def around_concept(prompts: list[str], vectors: torch.Tensor) -> torch.Tensor:
            return encode_with_slots(self.tokenizer, self.text_encoder, [split[p] for p in prompts], vectors)
        return around_concept

    def split_around_concept(self, prompt: str, concept: str) -> tuple[str, str]:
        """(text before, text after) the first place `prompt` names `concept` (a second naming
        is dropped; a prompt that names it not splits before its first word)."""
        before, after = self.world.with_token(prompt, concept, SLOT_MARK).split(SLOT_MARK, 1)
        return before, after.replace(SLOT_MARK, "")

    def retain_latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z_r, t, retain prompt ids): ESD-style partial DDIM latents under retain prompts."""
        cfg: AdvUnlearnConfig = self.config
        if self.retain_cache is None or self.step - self.retain_born >= cfg.refresh_every:
            # without replacement: every refresh covers retain_trajectories different prompts
            ids = torch.randperm(len(self.retain_set), generator=self.generator)[:cfg.retain_trajectories]
            latents, _ = self.sample_latents(self.frozen_unet, self.c_retain_frozen[ids.to(self.device)], len(ids))
            self.retain_cache, self.retain_born = (latents[:-1], ids), self.step
        latents, ids = self.retain_cache
        z_r, t, which = self.draw_cached(latents, n)
        return z_r, t, ids[which].to(self.device)

    @torch.no_grad()
    def concept_eps(self, x_t: torch.Tensor, t: torch.Tensor, k: int, prompt_ids: torch.Tensor) -> torch.Tensor:
        """eps*(x_t, t, c_f): what the original model predicts for the plain forget prompts (the attack's target)."""
        return self.frozen_unet(x_t, t, encoder_hidden_states=self.c_forget[k][prompt_ids]).sample.float()

    def adversarial_vectors(self, k: int, outer: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                           place: str = "prefix") -> tuple[torch.Tensor, list[float]]:
        """The inner attack against the current text encoder: (k adversarial embeddings, its losses).
        `outer` = the outer step's (x_t, t, prompt ids, eps*(c_f)), which `--attack-draw outer` attacks;
        `place`: where the vectors go (prefix or concept)."""
        cfg: AdvUnlearnConfig = self.config

        def draw():
            if cfg.attack_draw == "outer":
                x_t, t, prompt_ids, eps_f = outer
            else:  # the reference: a fresh t and x_t every attack step (attack_util.py:175-188)
                x_t, t, prompt_ids = self.draw_xt(k, cfg.batch_size)
                eps_f = self.concept_eps(x_t, t, k, prompt_ids)
            return [self.forget_prompt_sets[k][i] for i in prompt_ids.tolist()], x_t, t, eps_f

        with weights_frozen(self.trainable.values()):
            return soft_prompt_attack_on_draws(self.unet, self.tokenizer, self.text_encoder, draw, n_tokens=cfg.adv_tokens,
                                               steps=cfg.attack_steps, lr=cfg.attack_lr, fast=cfg.fast_attack,
                                               generator=self.generator, encode=self.adversarial_encoder(k, place))

    def compute_loss(self):
        cfg: AdvUnlearnConfig = self.config
        k = self.rng.randrange(len(cfg.concepts))
        x_t, t, prompt_ids = self.draw_xt(k, cfg.batch_size)
        target, eps_f = self.esd_target(x_t, t, k, prompt_ids)  # ESD Eq. 3 from θ* (its text encoder too)

        adversarial = None
        logs = {}
        place = cfg.attack_place
        if place == "both":  # drawn only in this mode, so the other two keep their random streams
            place = self.rng.choice(("prefix", "concept"))
        if self.step >= cfg.attack_warmup:  # inner: find the prompt that brings the concept back
            adversarial, losses = self.adversarial_vectors(k, (x_t, t, prompt_ids, eps_f), place)
            logs["attack"] = losses[-1]
        # the attack touches no .grad of the trained weights, so micro-batches of --grad-accum add up
        pred = self.unet(x_t, t, encoder_hidden_states=self.encode_trained(prompt_ids, k, adversarial, place)).sample.float()
        erase_loss = F.mse_loss(pred, target)

        # data parallel: the retain batch is sharded; the erase term (one forget prompt and its
        # attack) is computed alike by every process, so its averaged gradient is its own
        z_r, t_r, retain_ids = self.shard(*self.retain_latents(self.global_batch(cfg.retain_batch)))
        with torch.no_grad():
            eps_r_frozen = self.frozen_unet(z_r, t_r, encoder_hidden_states=self.c_retain_frozen[retain_ids]).sample.float()
        c_r = self.embed([self.retain_set[i] for i in retain_ids.tolist()], grad=True)
        retain_loss = F.mse_loss(self.unet(z_r, t_r, encoder_hidden_states=c_r).sample.float(), eps_r_frozen)
        loss = erase_loss + cfg.retain_weight * retain_loss
        return loss, {**logs, "erase": erase_loss.item(), "retain": retain_loss.item()}

    def extra_state(self) -> dict[str, torch.Tensor]:
        state = super().extra_state()
        if self.retain_cache is not None:
            state |= {"retain_latents": self.retain_cache[0], "retain_ids": self.retain_cache[1],
                      "retain_born": torch.tensor(self.retain_born)}
        return state

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_extra_state(tensors)
        if "retain_latents" in tensors:
            self.retain_cache = (tensors["retain_latents"], tensors["retain_ids"])
            self.retain_born = int(tensors["retain_born"])


register_method("advunlearn", AdvUnlearnConfig, AdvUnlearnTrainer)


@dataclass
class AdvUnlearnXConfig(AdvUnlearnConfig):
    """advunlearn-x: the same bi-level training on the UNet's cross-attention (ESD-x's weights; the
    text encoder stays the base's), the inner attack in both places. AdvUnlearn's paper weighs
    the module to train (its UNet and text-encoder rows) and ships the text encoder; the UNet is
    what concept inversion cannot go around: a learned token still passes through the erased
    cross-attention. MiniSD (docs/attacks.md): lr 5e-4, ESD-x's own."""
    world_defaults: ClassVar[dict] = {"mini": {**AdvUnlearnConfig.world_defaults["mini"], "lr": 5e-4}}


register_method("advunlearn-x", AdvUnlearnXConfig, AdvUnlearnTrainer, target="esd-x", attack_place="both")
