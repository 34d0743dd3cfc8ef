"""SFD: Score Forgetting Distillation into a one-step erased generator (Chen, Zhang & Zhou, ICLR 2025).

SFD distils the base model into a ONE-STEP generator with Score identity Distillation (SiD)
and, in the same objective, makes the generator draw a safe concept where the forgotten one was
asked for. Three networks, all Stable Diffusion UNets (the teacher and the fake net start from
the base, G from `--generator`, below):

  teacher   eps*    the pretrained score net, frozen (the "real" score);
  fake      eps_psi the score of the generator's own samples, trained by plain denoising on
                    them (detached), with its own Adam optimizer;
  generator G       `self.unet` (the weights this method trains and saves): noise at a fixed
                    t_init, one UNet call, predicted x0:
                        x_T = sqrt(1 - a) z,  z ~ N(0, I),  a = alphas_cumprod[t_init]
                        x_g = G(z, c) = (x_T - sqrt(1 - a) eps_G(x_T, t_init, c)) / sqrt(a)

Each optimizer step (one generator update):

 1. Fake-score update(s) (`fake_updates_per_generator`, 1 in the reference). For a batch of
    remain prompts c_r: x_g = G(z, c_r) without gradient, x_t = sqrt(a_t) x_g + sqrt(1 - a_t) n,
    t uniform in [t_min, t_max), and
        L_fake = sum || eps_psi^w(x_t, t, c_r) - n ||^2 / B
    where eps^w is the classifier-free-guided prediction at `fake_guidance` (the reference
    trains the guided prediction, and drops 10% of the prompts to "" so that the unconditional
    branch learns too). The same loss on the generator's samples of the forget prompts c_f
    (weight `fake_forget_weight`), so that the fake score also tracks what G now draws for c_f;
    its guidance's unconditional branch is `--negative-prompt` (a dropped row: "" for both).

 2. Generator update. SiD's loss on re-noised generator samples, with y_real and y_fake the
    teacher's and the fake net's denoised (x0) predictions of x_t (both guided):
        L_SiD(y_real, y_fake, x_g) = sum (y_real - y_fake) . ((y_real - x_g) - alpha (y_real - y_fake)) / w / B
        w = mean |x_g - y_real| per sample, a constant (no gradient)         [sid_generator_loss]
    remain term: x_g = G(z, c_r), y_real = teacher(x_t, c_r), y_fake = fake(x_t, c_r);
    forget term (the score-based unlearning loss): x_g = G(z, c_f), y_real = teacher(x_t, c_a)
    under the override (safe) concept c_a = --anchor, y_fake = fake(x_t, c_f): the generator's
    samples for c_f are pushed toward what the teacher predicts for c_a. Both guided
    predictions of the forget term take `--negative-prompt` as their unconditional branch.
        L_G = remain_weight * L_SiD(remain) + forget_weight * L_SiD(forget)
    Gradients flow into G through x_g, also through the teacher's and fake net's inputs (their
    own weights are frozen during this update).

The product is a one-step generator: the erasure manifest records `"sampling": {"one_step":
true, "t_init": ...}` and `ErasedPipeline.from_pretrained` samples it with OneStepScheduler in
one UNet call, guidance 1 (erasure/pipelines/one_step.py). The saved tensors are G alone (the
EMA of G when --ema is set), never the fake net or the teacher.

The starting generator (`--generator`). On Stable Diffusion the reference does not start G from
the teacher: one SD UNet call at t_init 625 is a blurry mean image, and SFD's few thousand
updates at lr 1e-6 do not make it a one-step generator. It loads a generator distilled
beforehand with SiD-LSG (~8M images at batch 512, guidance 4.5, t_init 625) and only forgets.
`--generator DIR` names that generator as a diffusers UNet folder (safetensors only, its config
the base UNet's); a Stable Diffusion run without one stops with a one-line error.
`--generator teacher` starts from the base UNet: MiniSD's measured recipe (its 64-px UNet learns
one-step sampling within the run), or an explicit choice elsewhere. The teacher and the fake net
always start from the base UNet, as in the reference.

The reference's nudity recipe (catalogue data, erasure/data/worlds/stable-diffusion.yaml):
forget prompts are 12 subjects ("Man", "Woman", "Body", ...) each said with one of 27 NSFW
keywords before or after it ("nudity Man", "Man, nudity": `--forget-keywords`); each one's
override prompt c_a is the bare subject; and a long NSFW list (`--negative-prompt`) is the
unconditional branch of the three guided predictions of the forget terms (the fake net's
training on forget samples, y_fake and y_real of the generator's forget term). Remain terms keep
the empty prompt as their unconditional branch (the reference's --sid_w_neg 0).

Two-stage mode (`--two-stage`): stage one is plain distillation (remain terms only) from the
starting generator for `--distill-steps`, cached under ~/.cache/erasure/sfd/ keyed by the base
weights, the starting generator and every setting that shapes it, so several concepts can be
forgotten from one distillation; stage two loads it as G (the fake net starts again from the
teacher, as in the reference) and runs the full loss above for `--steps`.

Defaults are the reference's Stable Diffusion run (tqch/score-forgetting-distillation,
SD/run_sfd.sh, SD/train.py and SD/training/training_loop.py; docs/sfd.md has the table with
file and line): alpha 1, guidance 4.5 for the teacher and the fake net, t_init 625, t in
[20, 980), batch 8, Adam betas (0, 0.999) with eps 1e-6 (its --fp16 1 run), fake lr 3e-6, G lr
1e-6, G's gradients clipped to [-1, 1] per element, all four loss weights 1, one fake update per
generator update, no EMA (--ema 0.0). With beta1 = 0 Adam's first moment is the step's gradient,
so both networks step with AdamWithoutFirstMoment: Adam's update without that buffer (an SD
UNet's worth of memory per network, tested equal to torch's Adam).

Memory plan (erasure/memory.py; bytes per UNet parameter P, SD 1.x: P = 860M, on the GPU):

  held all run   G's fp32 weights 4, its Adam state s; the fake net's fp32 weights 4, its state s;
                 the teacher frozen in bf16, 2 (fp32 runs: 4)
  fake update    + the fake net's gradients 4 (G's are None: G samples without gradient)
  G update       + G's gradients 4 (the fake net's were freed after its step: set to None)

Nothing holds two graphs: each term and micro-batch is one forward and its backward (freeing its
graph) before the next; the fake update's graphs are gone before G's update starts. So the peak
is 12 + 2s + 2 bytes per parameter, either update: --optimizer adam (AdamWithoutFirstMoment,
s = 4): 22 (18.9 GB for SD 1.x); adam8bit (s = 2): 18 (15.5 GB); adam-offload (s = 0, the state
in CPU memory): 14 (12.0 GB). Add the activations of one term's backward (a big UNet
checkpoints them by default, --gradient-checkpointing) and the bf16 text encoder and VAE
(~0.4 GB).

Where we differ, deliberately:
  * Precision: the reference trains fp16 weights (--fp16 1); we train fp32 weights (bf16
    autocast on CUDA: erasure does not train in fp16). Its fp16 companions, Adam eps 1e-6 and
    G's gradient clipping at 1, are kept so the update is the reference's.
  * Remain prompts: the reference uses LAION-Aesthetics 6+ captions, which we do not ship. On
    MiniSD we use the world's own English captions (every object, colour and style; never an
    evaluation prompt); elsewhere the second half of erasure/data/prompts/coco_10k.csv (its last
    4,985 of 9,969 captions), so that the coco-10k suite evaluated with --limit <= 4984 stays
    disjoint from training (the full suite overlaps: pass --remain-prompts FILE for a clean split).
  * Override prompts: on MiniSD the anchor keeps each caption's colour and style (Trainer.
    anchored_prompts); elsewhere a forget prompt containing the concept's words has them
    replaced by the anchor (as the reference's re.sub does) and any other prompt becomes the
    bare anchor (the reference would leave it unchanged, i.e. forget nothing for it); with
    --forget-keywords the override is the prompt before its keyword, as in the reference.
  * Forget prompts with keywords are the full product (prompt x keyword x before/after), drawn
    uniformly; the reference draws the keyword and its side at random per sample: the same
    distribution.
  * A NaN/inf loss stops the run (TrainingDiverged, like every method here) instead of the
    reference's dropping of NaN samples and nan_to_num on gradients.
  * --grad-accum N: each fake-score update and each generator update is the mean of N
    micro-batches (of --batch-size each), one optimizer step each per generator update; the
    reference accumulates its rounds the same way (--batch-gpu below --batch).
  * Only epsilon-prediction bases (SD 1.x, MiniSD); the reference also handles v-prediction.
  * EMA (off by default, as in the reference's SFD run) is the Trainer's constant-decay EMA
    (--ema 0.999), not SiD's half-life-in-images EMA with ramp-up.
  * MiniSD (measured, docs/sfd.md) starts G from the teacher, with lrs 1e-4, batch 4, guidance
    5, 300 updates, Adam eps 1e-8 and no gradient clipping.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..config import EraseConfig, doc
from ..erasure_files import hash_tensors
from ..errors import UserError
from ..files import load_tensors, save_tensors
from ..memory import AdamWithoutFirstMoment, enable_unet_checkpointing  # noqa: F401 (SFD's optimizer, tested here)
from ..prompt_files import SHIPPED_PROMPTS, read_prompt_table, read_prompts, shipped_prompt_file
from ..registry import register_method
from ..sampling import cfg as guided
from ..sampling import predicted_x0
from .base import Trainer, TrainingDiverged

ADAM_BETAS = (0.0, 0.999)  # the reference's, for both the generator and the fake score net
COCO_CAPTIONS = SHIPPED_PROMPTS / "coco_10k.csv"
DISTILL_FORMAT = 2  # bump when stage one's computation changes, so old caches are not reused
START_FROM_TEACHER = "teacher"


def sid_generator_loss(y_real: torch.Tensor, y_fake: torch.Tensor, x_g: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's generator loss, summed over a sample's elements and averaged over the batch:

        sum (y_real - y_fake) . ((y_real - x_g) - alpha (y_real - y_fake)) / w  / B,
        w = mean |x_g - y_real| over each sample's elements (clamped at 1e-5), held constant.

    With alpha = 1 it reads sum (y_real - y_fake) . (y_fake - x_g) / w."""
    with torch.no_grad():
        w = (x_g.float() - y_real.float()).abs().mean(dim=tuple(range(1, x_g.ndim)), keepdim=True).clamp_min(1e-5)
    diff = y_real - y_fake
    return (diff * ((y_real - x_g) - alpha * diff) / w).sum() / len(x_g)


def with_keywords(prompts: list[str], overrides: list[str], keywords: list[str]) -> tuple[list[str], list[str]]:
    """Every prompt said with every keyword, before it ("K P") and after it ("P, K"), each
    paired with the prompt's own override: the reference's --pos_data_prompt_text, whose random
    draw of keyword and side per sample this full product reproduces when drawn uniformly."""
    forget, override = [], []
    for prompt, over in zip(prompts, overrides):
        for keyword in keywords:
            forget += [f"{keyword} {prompt}", f"{prompt}, {keyword}"]
            override += [over, over]
    return forget, override


@dataclass
class SFDConfig(EraseConfig):
    target: str = doc("weights of the generator that train (reference: the whole UNet)", default="unet")
    generator: str = doc("where the one-step generator G starts: a diffusers UNet folder (config.json + "
                         "diffusion_pytorch_model.safetensors, or a pipeline folder with one in unet/) of a one-step "
                         "generator distilled from this base (reference: SiD-LSG's, ~8M images), or 'teacher' (the base "
                         "UNet itself: MiniSD's default; on Stable Diffusion one call at t_init is a blurry mean image). "
                         "Required on Stable Diffusion", default="")
    steps: int = doc("generator updates (reference README: its 100k-image snapshot, 12,500 updates at batch 8)",
                     default=12500)
    lr: float = doc("Adam learning rate of the generator (reference: 1e-6)", default=1e-6)
    fake_lr: float = doc("Adam learning rate of the fake score net (reference: 3e-6)", default=3e-6)
    adam_eps: float = doc("Adam eps of both optimizers (reference: 1e-6, its fp16 run; 1e-8 in fp32)", default=1e-6)
    generator_grad_clip: float = doc("clip each of G's gradient elements to [-c, c] before its step; 0 = off "
                                     "(reference: 1, its fp16 run)", default=1.0)
    batch_size: int = doc("generator samples per loss term (reference: 8)", default=8)
    alpha: float = doc("SiD's alpha in (y_real - y_fake)((y_real - x_g) - alpha (y_real - y_fake)) (reference: 1)",
                       default=1.0)
    t_init: int = doc("the generator's timestep: noise at t_init, one UNet call (reference: 625)", default=625)
    t_min: int = doc("smallest re-noising timestep of the losses (reference: 20)", default=20)
    t_max: int = doc("re-noising timesteps are drawn in [t_min, t_max) (reference: 980)", default=980)
    guidance: float = doc("classifier-free guidance of the teacher's prediction y_real (reference: 4.5)", default=4.5)
    fake_guidance: float = doc("classifier-free guidance of the fake score net, in its training and in y_fake "
                               "(reference: 4.5)", default=4.5)
    fake_dropout: float = doc("fraction of the fake net's training prompts replaced by '' when --fake-guidance != 1, "
                              "so its unconditional branch learns (reference: 0.1)", default=0.1)
    negative_prompt: str = doc("the unconditional branch of the forget terms' guided predictions (the fake net's "
                               "training on forget samples, y_fake and y_real of G's forget term); '' = the empty prompt "
                               "(reference: --neg_data_prompt_text; its nudity run: a list of NSFW words)", default="")
    forget_keywords: str = doc("none, or a .txt/.csv of keywords: every forget prompt P is trained as 'K P' and 'P, K' "
                               "for every keyword K, overridden by P itself (reference: --pos_data_prompt_text; its "
                               "nudity run: 27 NSFW words)", default="none")
    remain_weight: float = doc("weight of the generator's remain (distillation) term (reference: 1)", default=1.0)
    forget_weight: float = doc("weight of the generator's forget term (reference: 1)", default=1.0)
    fake_forget_weight: float = doc("weight of the fake net's denoising loss on the generator's forget-prompt samples "
                                    "(reference: 1)", default=1.0)
    fake_updates_per_generator: int = doc("fake-score updates before each generator update (reference: 1)", default=1)
    remain_prompts: str = doc("prompts whose generation is kept: auto (MiniSD: its world captions; otherwise the "
                              "second half of the shipped COCO captions) or a .txt/.csv prompt file", default="auto")
    n_remain: int = doc("MiniSD world captions drawn as remain prompts (with --remain-prompts auto)", default=256)
    two_stage: bool = doc("distil first without forgetting (cached, shared by every concept), then forget",
                          default=False)
    distill_steps: int = doc("generator updates of stage one with --two-stage", default=2000)
    checkpoint_every: int = doc("save a resumable checkpoint every N steps (0 = never; reference: every 5,000 images, "
                                "625 updates at batch 8; an SD 1.x checkpoint holds two UNets and their Adam states, "
                                "about 14 GB)", default=625)

    # MiniSD (measured, docs/sfd.md): G starts from the teacher (its 64-px UNet learns one-step
    # sampling within the run), its own guidance 5 for the teacher and the fake net, both lrs
    # 1e-4 (1e-6 moves a 64-px model nowhere in minutes), batch 4 (CPU time), 300 generator
    # updates, fp32's Adam eps and no gradient clipping (the reference's fp16 companions)
    world_defaults: ClassVar[dict] = {"mini": {"generator": START_FROM_TEACHER, "steps": 300, "lr": 1e-4,
                                               "fake_lr": 1e-4, "batch_size": 4, "guidance": 5.0, "fake_guidance": 5.0,
                                               "distill_steps": 300, "adam_eps": 1e-8, "generator_grad_clip": 0.0,
                                               "checkpoint_every": 100}}

    def __post_init__(self) -> None:
        super().__post_init__()
        self.generator = self.generator.strip()
        if not self.alpha > 0:
            raise UserError(f"--alpha must be positive (got {self.alpha})")
        if self.t_init < 1:
            raise UserError(f"--t-init must be at least 1 (got {self.t_init})")
        if not 0 <= self.t_min < self.t_max:
            raise UserError(f"--t-min and --t-max must satisfy 0 <= t_min < t_max (got {self.t_min}, {self.t_max})")
        if not self.fake_lr > 0:
            raise UserError(f"--fake-lr must be positive (got {self.fake_lr})")
        if not self.adam_eps > 0:
            raise UserError(f"--adam-eps must be positive (got {self.adam_eps})")
        if self.generator_grad_clip < 0:
            raise UserError(f"--generator-grad-clip must be >= 0 (0 = off; got {self.generator_grad_clip})")
        if not 0 <= self.fake_dropout < 1:
            raise UserError(f"--fake-dropout must be in [0, 1) (got {self.fake_dropout})")
        if self.fake_updates_per_generator < 1:
            raise UserError(f"--fake-updates-per-generator must be at least 1 (got {self.fake_updates_per_generator})")
        if self.two_stage and self.distill_steps < 1:
            raise UserError(f"--distill-steps must be at least 1 with --two-stage (got {self.distill_steps})")
        if self.anchor.strip() and self.anchor.strip().lower() in (c.lower() for c in self.concepts):
            raise UserError(f"--anchor '{self.anchor.strip()}' is the concept itself; SFD overrides the concept with "
                            "a different one, e.g. --anchor 'a person wearing clothes'")

    def check_run(self) -> None:
        """A run needs a starting generator (checked before the base model loads); a config
        without one is still a config (`erasure ls`, --help show the defaults)."""
        if not self.generator:
            raise UserError("--generator: SFD on this model starts from a one-step generator distilled from the base "
                            "beforehand (the reference: SiD-LSG, ~8M images); pass its diffusers UNet folder, or "
                            "--generator teacher to start from the base UNet (one call at t_init gives a blurry mean image)")


class SFDTrainer(Trainer):
    config_cls = SFDConfig
    # data parallel: every draw (prompts, z, t, noise, dropout) is made for the global batch and
    # sharded; the fake net's and G's gradients are each averaged before their steps. Stage one
    # (--two-stage) trains in setup, every process at once.
    setup_trains = True

    def make_optimizer(self) -> torch.optim.Optimizer:
        # --optimizer adam: AdamWithoutFirstMoment (beta1 = 0); adam8bit: bitsandbytes' at betas (0, 0.999)
        return self.adam(self.trainable.values(), self.config.lr, betas=ADAM_BETAS, eps=self.config.adam_eps)

    def fake_adam(self) -> torch.optim.Optimizer:
        return self.adam(self.fake.parameters(), self.config.fake_lr, betas=ADAM_BETAS, eps=self.config.adam_eps)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg: SFDConfig = self.config
        n_timesteps = len(self.alphas_cumprod)
        if not 1 <= cfg.t_init <= n_timesteps - 1:
            raise UserError(f"--t-init must be in [1, {n_timesteps - 1}] for this model (got {cfg.t_init})")
        if cfg.t_max > n_timesteps:
            raise UserError(f"--t-max must be at most {n_timesteps} for this model (got {cfg.t_max})")
        prediction = self.pipe.scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise UserError(f"SFD here supports epsilon-prediction models only (this one predicts {prediction})")
        if any(not k.startswith("unet.") for k in self.trainable):
            raise UserError(f"SFD's generator is the UNet; --target {cfg.target} trains other weights (use --target unet)")

        self.teacher = self.frozen_copy(self.unet)                 # eps*: never trained
        self.fake = self.copy_module(self.unet).float().requires_grad_(False)  # eps_psi: trained in its own update
        self.fake_optimizer = self.fake_adam()
        self.start_generator()  # G: the distilled one-step generator (teacher and fake net stay the base)
        if self.plan.gradient_checkpointing:  # G's backward passes through all three
            for net in (self.unet, self.teacher, self.fake):
                enable_unet_checkpointing(net)
        self.c_empty = self.embed([""])
        self.c_negative = self.embed([cfg.negative_prompt]) if cfg.negative_prompt else self.c_empty
        self.latent_shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        self.remain = self.remain_prompt_list()
        self.forget, self.override = [], []
        for concept in cfg.concepts:
            forget, override = self.forget_pairs(concept)
            self.forget += forget
            self.override += override
        if cfg.two_stage:
            self.start_from_distilled()

    def start_generator(self) -> None:
        """Copy `--generator`'s weights into G (a diffusers UNet folder, safetensors only, whose
        config must be the base UNet's); 'teacher' keeps the base UNet's."""
        cfg: SFDConfig = self.config
        if cfg.generator == START_FROM_TEACHER:
            return
        from diffusers import UNet2DConditionModel

        folder = Path(cfg.generator).expanduser()
        if (folder / "unet" / "config.json").is_file():  # a whole pipeline folder
            folder = folder / "unet"
        if not (folder / "config.json").is_file():
            raise UserError(f"--generator: no diffusers UNet folder at {cfg.generator} (config.json + "
                            "diffusion_pytorch_model.safetensors); pass one, or --generator teacher")
        try:
            generator = UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise UserError(f"--generator: {folder} holds no loadable safetensors UNet ({str(e).splitlines()[0]}); "
                            "erasure reads safetensors only: save it with unet.save_pretrained(DIR, "
                            "safe_serialization=True)") from None
        mine, theirs = unet_architecture(self.unet.config), unet_architecture(generator.config)
        if mine != theirs:
            diff = ", ".join(f"{k} {theirs.get(k)} (base: {mine.get(k)})" for k in sorted(set(mine) | set(theirs))
                             if mine.get(k) != theirs.get(k))
            raise UserError(f"--generator: {folder} is not a UNet of this base's architecture ({diff}); pass a "
                            "generator distilled from this base model")
        weights = generator.state_dict()
        with torch.no_grad():
            for name, p in self.unet.named_parameters():
                p.copy_(weights[name])
        del generator, weights
        if self.ema_weights is not None:  # the average starts from the starting generator
            self.ema_weights = {k: p.detach().clone() for k, p in self.trainable.items()}

    def remain_prompt_list(self) -> list[str]:
        cfg: SFDConfig = self.config
        if cfg.remain_prompts != "auto":
            return read_prompts(shipped_prompt_file(cfg.remain_prompts), "--remain-prompts", "auto")
        own = self.world.ordinary_prompts(cfg.n_remain, seed=cfg.seed)  # the world's ordinary captions (MiniSD)
        if own is not None:
            return own
        captions = [row["prompt"] for row in read_prompt_table(COCO_CAPTIONS, "--remain-prompts auto", csv_only=True)]
        return captions[len(captions) // 2:]

    def forget_prompts(self, concept: str) -> list[str]:
        return self.world.concept_prompts(concept, shipped_prompt_file(self.config.concept_prompts), seed=self.config.seed)

    def forget_pairs(self, concept: str) -> tuple[list[str], list[str]]:
        """(forget prompts c_f, override prompts c_a), row for row."""
        cfg: SFDConfig = self.config
        anchor = self.anchor_of(concept)  # refuses an override equal to the concept
        forget = self.forget_prompts(concept)
        override = self.world.override_prompts(forget, concept, anchor, shipped_prompt_file(cfg.concept_prompts))
        if cfg.forget_keywords.strip().lower() == "none":
            return forget, override
        # the reference's re.sub(concept, override, prompt) leaves a prompt without the concept's words as it is
        override = [o if self.world.names_concept(f, concept) else f for f, o in zip(forget, override)]
        keywords = read_prompts(shipped_prompt_file(cfg.forget_keywords), "--forget-keywords", "none,")
        return with_keywords(forget, override, keywords)

    # ------------------------------------------------------------------ the three networks
    def generate(self, cond: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_g = G(z, c): noise at t_init, one call of the generator, its predicted x0."""
        t = torch.full((len(z),), self.config.t_init, device=self.device, dtype=torch.long)
        x_init = (1 - self.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1) * z
        eps = self.unet(x_init, t, encoder_hidden_states=cond).sample.float()
        return predicted_x0(x_init, eps, self.alphas_cumprod, t)

    def noise_prediction(self, net, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, guidance: float,
                         uncond: torch.Tensor | None = None):
        """eps(x_t, t, c), classifier-free guided at `guidance` (one batched call for both
        branches); `uncond`: the unconditional branch's embedding, one row or one per sample
        (default: the empty prompt's)."""
        if guidance == 1:
            return net(x_t, t, encoder_hidden_states=cond).sample.float()
        uncond = self.c_empty if uncond is None else uncond
        uncond = uncond.expand(len(x_t), -1, -1) if len(uncond) == 1 else uncond
        eps = net(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_uncond, eps_cond = eps.float().chunk(2)
        return guided(eps_uncond, eps_cond, guidance)

    # ------------------------------------------------------------------ random draws (all from the run's generator)
    # (each drawn for the global batch, this process's rows kept: see Trainer.shard)
    def rows(self, high: int) -> list[int]:
        return self.shard(self.randint(high, (self.global_batch(self.config.batch_size),)))[0].tolist()

    def pick(self, prompts: list[str]) -> list[str]:
        return [prompts[i] for i in self.rows(len(prompts))]

    def pick_pairs(self) -> tuple[list[str], list[str]]:
        idx = self.rows(len(self.forget))
        return [self.forget[i] for i in idx], [self.override[i] for i in idx]

    def latent_noise(self, n: int) -> torch.Tensor:
        """z for `n` generator samples of this process."""
        return self.shard(self.randn(self.global_batch(n), *self.latent_shape))[0]

    # ------------------------------------------------------------------ 1. fake score net
    def fake_denoising_loss(self, prompts: list[str], uncond: torch.Tensor | None = None) -> torch.Tensor:
        """L_fake on the generator's (detached) samples of `prompts`; `uncond` the guidance's
        unconditional branch (a dropped row takes "" for both branches, as the reference)."""
        cfg: SFDConfig = self.config
        with torch.no_grad():
            x_g = self.generate(self.embed(prompts), self.latent_noise(len(prompts)))
        x_t, t, noise = self.noised_rows(x_g, t_range=(cfg.t_min, cfg.t_max))
        uncond = self.c_empty if uncond is None else uncond
        if cfg.fake_guidance != 1 and cfg.fake_dropout > 0:  # train the unconditional branch too
            drawn = self.shard(torch.rand(self.global_batch(len(prompts)), generator=self.generator))[0]
            dropped = (drawn < cfg.fake_dropout).tolist()
            prompts = ["" if d else p for p, d in zip(prompts, dropped)]
            if uncond is not self.c_empty:
                keep = torch.tensor([not d for d in dropped], device=self.device).view(-1, 1, 1)
                uncond = torch.where(keep, uncond, self.c_empty)
        eps = self.noise_prediction(self.fake, x_t, t, self.embed(prompts), cfg.fake_guidance, uncond)
        return ((eps - noise) ** 2).sum() / len(prompts)

    def fake_score_update(self, forget: bool = True) -> dict[str, float]:
        """One Adam step of the fake score net, on the mean of `grad_accum` micro-batches' L_fake;
        G, the teacher and G's optimizer are untouched. Returns the micro-batches' mean losses."""
        cfg: SFDConfig = self.config
        n = cfg.grad_accum
        self.fake.requires_grad_(True)
        self.fake_optimizer.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for _ in range(n):
            terms = [("fake", 1.0, self.pick(self.remain), self.c_empty)]
            if forget and cfg.fake_forget_weight > 0:
                terms.append(("fake_forget", cfg.fake_forget_weight, self.pick_pairs()[0], self.c_negative))
            for name, weight, prompts, uncond in terms:  # one backward per term, as the reference (peak memory)
                loss = self.fake_denoising_loss(prompts, uncond)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"the fake score net's loss became {loss.item()} at step {self.step}; "
                                           "lower --fake-lr or use --dtype float32")
                (weight * loss / n).backward()
                logs[name] = logs.get(name, 0.0) + loss.item() / n
                del loss  # its graph is freed by the backward; nothing of it is held into the next term
        if self.processes > 1:  # the global batch's gradient
            distributed.mean_([p.grad for p in self.fake.parameters() if p.grad is not None])
        self.fake_optimizer.step()
        self.fake_optimizer.zero_grad(set_to_none=True)  # its gradients (a UNet's worth) are not held through G's update
        self.fake.requires_grad_(False)
        return logs

    # ------------------------------------------------------------------ 2. generator
    def sid_term(self, c_gen: torch.Tensor, c_real: torch.Tensor, c_fake: torch.Tensor,
                 uncond: torch.Tensor | None = None) -> torch.Tensor:
        """L_SiD for x_g = G(z, c_gen), y_real = teacher(x_t, c_real), y_fake = fake(x_t, c_fake),
        both guided with `uncond` as their unconditional branch (default "")."""
        cfg: SFDConfig = self.config
        x_g = self.generate(c_gen, self.latent_noise(len(c_gen)))
        x_t, t, _ = self.noised_rows(x_g, t_range=(cfg.t_min, cfg.t_max))
        y_real = predicted_x0(x_t, self.noise_prediction(self.teacher, x_t, t, c_real, cfg.guidance, uncond),
                              self.alphas_cumprod, t)
        y_fake = predicted_x0(x_t, self.noise_prediction(self.fake, x_t, t, c_fake, cfg.fake_guidance, uncond),
                              self.alphas_cumprod, t)
        return sid_generator_loss(y_real, y_fake, x_g, cfg.alpha)

    def generator_backward(self, forget: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """Backpropagate L_G, the mean over `grad_accum` micro-batches, into G's gradients (one
        backward per term and micro-batch: peak memory) and return it detached. The fake net and
        the teacher hold no gradient here."""
        cfg: SFDConfig = self.config
        n = cfg.grad_accum
        total, logs = None, {"remain": 0.0}
        for _ in range(n):
            c_r = self.embed(self.pick(self.remain))
            remain = self.sid_term(c_r, c_r, c_r)
            (cfg.remain_weight * remain / n).backward()
            term = cfg.remain_weight * remain.detach() / n
            total = term if total is None else total + term
            logs["remain"] += remain.item() / n
            del remain
            if forget and cfg.forget_weight > 0:
                forget_prompts, override_prompts = self.pick_pairs()
                c_f, c_a = self.embed(forget_prompts), self.embed(override_prompts)
                forget_term = self.sid_term(c_f, c_a, c_f, self.c_negative)
                (cfg.forget_weight * forget_term / n).backward()
                total = total + cfg.forget_weight * forget_term.detach() / n
                logs["forget"] = logs.get("forget", 0.0) + forget_term.item() / n
                del forget_term
        return total, logs

    def compute_loss(self):
        """One optimizer step's work: the fake-score update(s), then G's backward, each over
        `grad_accum` micro-batches (the Trainer's loop calls it once per step: see
        accumulate_gradients)."""
        logs: dict[str, float] = {}
        for _ in range(self.config.fake_updates_per_generator):
            logs.update(self.fake_score_update(forget=True))
        loss, generator_logs = self.generator_backward(forget=True)
        return loss, {**logs, **generator_logs}

    def accumulate_gradients(self, out, read_loss: bool = True):
        """SFD's step alternates two updates, so its micro-batches live inside them: the fake
        net steps once on the mean of `grad_accum` micro-batches, then G's gradient is the mean
        of as many (compute_loss); the Trainer then steps G once."""
        with self.autocast():
            loss, logs = self.compute_loss()
        if not read_loss:
            return 0.0, logs
        self.check_loss(loss, out)
        return loss.item(), logs

    def before_optimizer_step(self) -> None:
        self.clip_generator_gradients()

    def clip_generator_gradients(self) -> None:
        """The reference clips G's gradients by value before its step (NaN stays NaN: the
        trainer's guard still stops on it)."""
        clip = self.config.generator_grad_clip
        grads = [p for p in self.trainable.values() if p.grad is not None]
        if clip > 0 and grads:
            torch.nn.utils.clip_grad_value_(grads, clip)

    # ------------------------------------------------------------------ two-stage mode: stage one
    def distill_settings(self) -> dict:
        """Everything stage one's result depends on (its cache key)."""
        cfg: SFDConfig = self.config
        names = ("target", "t_init", "t_min", "t_max", "alpha", "guidance", "fake_guidance", "fake_dropout", "lr",
                 "fake_lr", "adam_eps", "generator_grad_clip", "batch_size", "remain_weight",
                 "fake_updates_per_generator", "distill_steps", "ema", "seed")
        parallel = {"processes": self.processes} if self.processes > 1 else {}  # the global batch
        return {"format": DISTILL_FORMAT, "bf16": self.use_bf16, **{n: getattr(cfg, n) for n in names}, **parallel,
                "generator": hash_tensors(self.unet.state_dict()), "teacher": hash_tensors(self.teacher.state_dict()),
                "text_encoder": hash_tensors(self.text_encoder.state_dict()),
                "remain_prompts": hashlib.sha256(json.dumps(self.remain).encode()).hexdigest()}

    def start_from_distilled(self) -> None:
        """Load stage one's generator from the cache, or distil it and cache it; G becomes it."""
        settings = self.distill_settings()
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
        path = self.cache_dir / "sfd" / f"{key}.safetensors"
        if path.exists():
            tensors = load_tensors(path, self.device)
        else:  # under a launcher every process distils (data parallel), the main one writes
            tensors = self.distill()
            if self.rank == 0:
                save_tensors(path, tensors, metadata={"settings": json.dumps(settings, sort_keys=True)})
        if self.processes > 1:
            distributed.wait()
        with torch.no_grad():
            for k, p in self.trainable.items():
                p.copy_(tensors[k])
        if self.ema_weights is not None:  # stage two's average starts from the distilled generator
            self.ema_weights = {k: p.detach().clone() for k, p in self.trainable.items()}
        self.distilled_from = path

    def distill(self) -> dict[str, torch.Tensor]:
        """Stage one: plain SiD distillation (remain terms only) for `distill_steps`, on its own
        random stream, fake net copy and optimizers, so that stage two runs the same whether
        stage one was computed now or read from the cache. Returns G (its EMA when --ema)."""
        cfg: SFDConfig = self.config
        stage_two = (self.generator, self.fake, self.fake_optimizer)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.fake = self.copy_module(self.fake)
        self.fake_optimizer = self.fake_adam()
        optimizer = self.make_optimizer()
        ema = {k: p.detach().clone() for k, p in self.trainable.items()} if cfg.ema else None
        try:
            for step in tqdm(range(cfg.distill_steps), desc="sfd stage one: distillation", dynamic_ncols=True):
                optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    for _ in range(cfg.fake_updates_per_generator):
                        self.fake_score_update(forget=False)
                    loss, _ = self.generator_backward(forget=False)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"stage one's loss became {loss.item()} at step {step}; lower --lr or "
                                           "--fake-lr, or use --dtype float32")
                if self.processes > 1:
                    self.average_gradients()
                self.clip_generator_gradients()
                optimizer.step()
                if ema is not None:
                    with torch.no_grad():
                        for k, p in self.trainable.items():
                            ema[k].lerp_(p.detach(), 1 - cfg.ema)
        finally:
            self.generator, self.fake, self.fake_optimizer = stage_two
            for p in self.trainable.values():
                p.grad = None
        return {k: (ema[k] if ema is not None else p.detach()).clone() for k, p in self.trainable.items()}

    # ------------------------------------------------------------------ checkpoints and the product
    def extra_state(self) -> dict[str, torch.Tensor]:
        """The fake score net and its Adam state (G, G's Adam state, the EMA and every RNG are the
        trainer's): with them a resumed run is the uninterrupted one."""
        return self.network_state("fake", self.fake, self.fake_optimizer)

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_network_state("fake", self.fake, self.fake_optimizer, tensors)

    def manifest_extra(self) -> dict:
        """How the product samples (read by ErasedPipeline and the CLI), and stage one's cache file."""
        extra = {"sampling": {"one_step": True, "t_init": self.config.t_init, "num_inference_steps": 1,
                              "guidance_scale": 1.0}}
        if getattr(self, "distilled_from", None):
            extra["sfd_stage_one"] = str(self.distilled_from)
        return extra

    def save(self, out_dir):
        """Write the erasure (G alone); `self.pipe` then samples like the product, as
        ErasedPipeline.from_pretrained(out_dir) would: one step with OneStepScheduler, guidance 1."""
        from ..erasure_files import read_manifest
        from ..pipelines import ErasedPipeline, OneStepScheduler

        out = super().save(out_dir)
        pipe = ErasedPipeline(**self.pipe.components, requires_safety_checker=False)
        pipe.scheduler = OneStepScheduler.from_base(self.pipe.scheduler.config, self.config.t_init)
        pipe.erasure_manifest = read_manifest(out)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        return out


def unet_architecture(config) -> dict:
    """A UNet config's architecture settings (not diffusers' bookkeeping: names, versions), lists
    for tuples, for comparing two UNets."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if not k.startswith("_")}


register_method("sfd", SFDConfig, SFDTrainer)
