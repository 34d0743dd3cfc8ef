"""DoCo: concept domain correction (Wu et al., AAAI 2025).

A discriminator learns to tell the frozen model's predicted clean latents for the *anchor*
prompt ("real") from the trained model's predicted clean latents for the *forget* prompt
("fake"), both from the same noisy anchor latents; the UNet is trained to fool it, so the forget
prompt's output distribution moves onto the anchor's (Sec. 3.2). A retention loss (ordinary
denoising on the anchor images, Concept Ablation's prior preservation) keeps the anchor concept,
and the concept-preserving gradient (Sec. 3.3) removes from the adversarial gradient the part
that conflicts with the retention gradient:

    if <g_adv, g_ret> < 0:  g_adv <- g_adv - <g_adv, g_ret> / |g_ret|^2 * g_ret     (projection="full")

The reference code instead subtracts cos(g_adv, g_ret) times the *unit* vector of g_ret, which
removes the conflict only when |g_adv| = 1; it is available as projection="reference". We
default to the full projection: it is the paper's equation and provably leaves no component
along g_ret. The projection is per trained tensor, as in the reference.

Trains `attn2.to_k` / `attn2.to_v` (preset attn2-kv). Defaults as the paper: AdamW lr 6e-6,
batch 8, 2000 steps of which the first 1000 train only the discriminator (its lr 1e-4 for
nudity and objects; the paper uses 5e-4 for styles).

Where we differ, deliberately:
  * PatchGAN layout (latent input, 64-128-256-512-1 channels): the three downsampling convs are
    4x4 stride 2 as in the reference; its last two stride-1 convs are 3x3 with padding 1 here
    instead of 4x4, so a MiniSD latent (16x16) still gives a patch map (4x4 convs shrink it
    to nothing); on SD's 64x64 latents this changes the patch map from 6x6 to 8x8.
  * The discriminator sees real and fake in one batch (one batch-norm statistic for both) and
    scores the UNet's output with its running statistics; batch-normalising each side on its
    own hid their difference (MiniSD: the discriminator loss stayed at 2 ln 2, chance).
  * The anchor images are the base model's own (erasure/selfdata.py), shared with SalUn's
    cache, rather than a separate download-or-generate step.
  * `adv_guidance` (MiniSD's default 5, its sampling guidance; 0, the paper's, elsewhere): the
    discriminator compares *guided* predictions, x0 of eps_u + w (eps_c - eps_u), the frozen
    model's under the anchor prompt against the trained model's under the forget prompt. Images
    are sampled with classifier-free guidance, which multiplies whatever difference is left
    between the two conditional predictions by w. Unguided, the discriminator settled at chance
    while a quarter to a third of MiniSD's circle prompts still drew circles (nine settings,
    docs/doco.md); guided, the same run erases circle (docs/erasure-minisd.md).
    The stronger adversarial signal needs more retention on MiniSD: retain_weight 3 there (the
    paper's 1 elsewhere); at 2 the cross object drifted to 0.938 in one of two runs.
  * `retain_on="anchor+retain"` (MiniSD's default) also denoises images of retain prompts (the
    other objects' captions): MiniSD's to_k/to_v are shared by every prompt, and with the
    anchor alone the other objects drifted (measured: square 0.83, cross 0.92 object accuracy
    after an otherwise default MiniSD run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SelfDataConfig, doc
from ..errors import UserError
from ..registry import register_method
from ..sampling import cfg as cfg_noise
from ..sampling import predicted_x0
from .base import Trainer


class PatchDiscriminator(nn.Module):
    """PatchGAN over latents: one real/fake logit per patch."""

    def __init__(self, in_channels: int = 4, width: int = 64) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 8 * w, 3, 1, 1), nn.BatchNorm2d(8 * w), nn.LeakyReLU(0.2),
            nn.Conv2d(8 * w, 1, 3, 1, 1),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def project_conflict(g_adv: torch.Tensor, g_ret: torch.Tensor, mode: str) -> torch.Tensor:
    """The concept-preserving gradient (Sec. 3.3): g_adv without its part that opposes g_ret."""
    dot = (g_adv * g_ret).sum()
    if mode == "none" or dot >= 0:
        return g_adv
    ret_norm2 = (g_ret * g_ret).sum().clamp_min(1e-30)
    if mode == "full":
        return g_adv - dot / ret_norm2 * g_ret
    cos = dot / (g_adv.norm() * ret_norm2.sqrt()).clamp_min(1e-30)  # "reference"
    return g_adv - cos * g_ret / ret_norm2.sqrt()


def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


@dataclass
class DoCoConfig(SelfDataConfig):
    target: str = doc("weights that train (paper: attn2.to_k and attn2.to_v)", default="attn2-kv")
    steps: int = doc("steps in all, discriminator warm-up included (paper: 2000)", default=2000)
    lr: float = doc("AdamW learning rate of the UNet (paper: 6e-6)", default=6e-6)
    batch_size: int = doc("anchor images per step (paper: 8)", default=8)
    disc_lr: float = doc("discriminator learning rate (paper: 1e-4 nudity/objects, 5e-4 styles)", default=1e-4)
    disc_warmup: int = doc("first steps that train only the discriminator (paper: 1000)", default=1000)
    retain_weight: float = doc("weight of the retention (denoising) loss on the anchor images", default=1.0)
    projection: str = doc("concept-preserving gradient: full (the paper's projection), reference (the official "
                          "code's cos-times-unit-vector variant) or none", default="full")
    n_anchor: int = doc("self-generated anchor images (reference: 200)", default=200)
    retain_on: str = doc("what the retention loss denoises: anchor (the paper: the anchor images) or anchor+retain "
                         "(also images of retain prompts: on MiniSD the other objects' captions)", default="anchor")
    n_retain: int = doc("self-generated retain images when --retain-on anchor+retain", default=128)
    adv_guidance: float = doc("classifier-free guidance of the predicted x0 the discriminator compares: 0 = the "
                              "conditional prediction alone (the paper); MiniSD: 5, its sampling guidance", default=0.0)

    world_defaults: ClassVar[dict] = {"mini": {"steps": 400, "disc_warmup": 100, "lr": 1e-3, "disc_lr": 5e-4,
                                               "n_anchor": 128, "retain_on": "anchor+retain", "adv_guidance": 5.0,
                                               "retain_weight": 3.0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection not in ("full", "reference", "none"):
            raise UserError(f"--projection must be full, reference or none (got '{self.projection}')")
        if not 0 <= self.disc_warmup < self.steps:
            raise UserError(f"--disc-warmup must be in [0, --steps) (got {self.disc_warmup} of {self.steps})")
        if self.retain_on not in ("anchor", "anchor+retain"):
            raise UserError(f"--retain-on must be anchor or anchor+retain (got '{self.retain_on}')")
        if self.n_anchor < 1:
            raise UserError("--n-anchor must be at least 1")
        if self.adv_guidance < 0:
            raise UserError(f"--adv-guidance must be >= 0 (0: unguided, the paper; got {self.adv_guidance})")


class DoCoTrainer(Trainer):
    config_cls = DoCoConfig

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trainable.values(), lr=self.config.lr)

    def setup(self) -> None:
        cfg: DoCoConfig = self.config
        self.frozen_unet = self.frozen_copy(self.unet)
        forget_prompts, anchor_prompts = [], []
        for concept in cfg.concepts:
            f, a = self.anchored_prompts(concept)
            forget_prompts += f
            anchor_prompts += a
        # anchor image i comes from anchor prompt i mod P; its forget twin is forget prompt i mod P
        self.anchor_data = self.self_data(anchor_prompts, cfg.n_anchor)
        self.c_forget, self.c_anchor = self.embed(forget_prompts), self.embed(anchor_prompts)
        self.retain_data = None
        if cfg.retain_on == "anchor+retain":
            retain_prompts = [p for c in cfg.concepts for p in self.retain_prompts(c)]
            self.retain_data, self.c_retain = self.self_data(retain_prompts, cfg.n_retain), self.embed(retain_prompts)
        self.c_uncond = self.embed([""])
        self.discriminator = PatchDiscriminator(self.unet.config.in_channels).to(self.device)
        self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.999))

    def predicted_x0(self, unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x0_hat of `unet` under `cond`; with adv_guidance > 0, of the guided noise
        eps_u + w (eps_c - eps_u), the prediction a sampler actually follows."""
        w = self.config.adv_guidance
        if w == 0:
            return predicted_x0(x_t, unet(x_t, t, encoder_hidden_states=cond).sample.float(), self.alphas_cumprod, t)
        both = torch.cat([self.c_uncond.expand(len(x_t), -1, -1), cond])
        eps_u, eps_c = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), encoder_hidden_states=both).sample.float().chunk(2)
        return predicted_x0(x_t, cfg_noise(eps_u, eps_c, w), self.alphas_cumprod, t)

    def compute_loss(self):
        cfg: DoCoConfig = self.config
        x0, prompt_ids = self.draw_batch(self.anchor_data, cfg.batch_size)
        c_a, c_f = self.c_anchor[prompt_ids], self.c_forget[prompt_ids]
        x_t, t, noise = self.noised(x0)
        with torch.no_grad():  # "real": the original model's clean-latent prediction for the anchor
            real = self.predicted_x0(self.frozen_unet, x_t, t, c_a)
        fake = self.predicted_x0(self.unet, x_t, t, c_f)

        # discriminator step: real -> 1, fake -> 0, in one batch so that batch norm sees both
        # (normalising each alone removes exactly the statistics that tell them apart)
        self.discriminator.train()
        logits_real, logits_fake = self.discriminator(torch.cat([real, fake.detach()])).chunk(2)
        disc_loss = bce(logits_real, True) + bce(logits_fake, False)
        self.disc_optimizer.zero_grad(set_to_none=True)
        disc_loss.backward()
        self.disc_optimizer.step()
        self.discriminator.eval()  # the UNet's adversarial loss reads the running statistics
        logs = {"disc": disc_loss.item()}
        if self.step < cfg.disc_warmup:  # warm-up: the UNet does not move
            return disc_loss.detach(), logs

        # UNet: fool the discriminator (adversarial loss), keep denoising the anchor (retention)
        adv_loss = bce(self.discriminator(fake), True)
        eps_anchor = self.unet(x_t, t, encoder_hidden_states=c_a).sample.float()
        retain_loss = F.mse_loss(eps_anchor, noise)
        if self.retain_data is not None:
            retain_loss = (retain_loss + self.denoising_loss(self.retain_data, self.c_retain, cfg.batch_size)) / 2
        params = list(self.trainable.values())
        g_adv = torch.autograd.grad(adv_loss, params, allow_unused=True)
        g_ret = torch.autograd.grad(retain_loss, params, allow_unused=True)
        for p, ga, gr in zip(params, g_adv, g_ret):
            ga = torch.zeros_like(p) if ga is None else ga
            gr = torch.zeros_like(p) if gr is None else gr
            g = (project_conflict(ga, gr, cfg.projection) + cfg.retain_weight * gr) / cfg.grad_accum
            p.grad = g if p.grad is None else p.grad + g
        self.discriminator.zero_grad(set_to_none=True)
        return (adv_loss + cfg.retain_weight * retain_loss).detach(), {**logs, "adv": adv_loss.item(),
                                                                       "retain": retain_loss.item()}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.network_state("disc", self.discriminator, self.disc_optimizer)

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_network_state("disc", self.discriminator, self.disc_optimizer, tensors)


register_method("doco", DoCoConfig, DoCoTrainer)
