"""DoCo: concept domain correction (Wu et al., AAAI 2025).

A discriminator learns to tell the frozen model's predicted clean latents for an *anchor*
caption ("real") from the trained model's predicted clean latents for its *forget* caption
("fake"), both from the same noisy anchor latents; the UNet is trained to fool it, so the forget
prompt's output distribution moves onto the anchor's (Sec. 3.2). A retention loss (ordinary
denoising on the anchor images under their captions, Concept Ablation's prior preservation)
keeps the anchor concept, and the concept-preserving gradient (Sec. 3.3) removes from the
adversarial gradient the part that conflicts with the retention gradient.

Prompt pairs, as the reference builds them (Ablating Concepts' dataset): every anchor caption
(a caption of an image of the anchor; the base model draws the anchor images from them) is
paired with a forget caption made from it (`--pairing`):

    swap  (objects, nudity)  the anchor's word said as the concept:
          "a photo of a house by a lake" -> "a photo of a church by a lake"
    style (styles)           "{caption}, in the style of {concept}" or, twice as often,
                             "in {concept}'s style, {caption}" (drawn afresh at every step)

The caption sets are files (`--captions`; a name in erasure/data/prompts or a path): the
catalogue's recipes name doco_clothed.txt (nudity, anchor "clothed"), doco_painting.txt (Van
Gogh, anchor "painting") and doco_objects.txt (objects; "{anchor}" stands where the anchor's
word goes, so it serves any object anchor). The reference asks ChatGPT for 200 captions of its
anchor (objects, nudity) or retrieves 200 LAION captions for it (styles); these are ours, of the
same form. Without `--captions` the world's prompts pair row for row with their anchors (MiniSD:
its captions; elsewhere the concept's words against the bare anchor).

The concept-preserving gradient, per trained tensor, when g_adv and g_ret conflict:

    reference  (the official code's --gradient_clip path; the Stable Diffusion default)
               both gradients clipped to global norm 1 over the trained tensors, then
               g = g_adv - retain_weight * cos(g_adv, g_ret) * g_ret/|g_ret|  if cos < 0, else g_adv;
               the retention gradient itself is never applied, it only steers (retain_weight is
               the reference's --lambda_, 1)
    full       g = g_adv - <g_adv, g_ret>/|g_ret|^2 * g_ret (if < 0) + retain_weight * g_ret:
               the paper's projection, which leaves no component against g_ret, plus the
               retention gradient (MiniSD's default)
    none       g = g_adv + retain_weight * g_ret

Micro-batches of `--grad-accum` accumulate g_adv and g_ret apart; the projection acts on their
means, once per optimizer step. The discriminator also steps once per optimizer step, on the mean
of its micro-batches' gradients, at the last micro-batch (as an optimizer under accelerate's
gradient accumulation, the reference's, steps only then): the UNet's adversarial loss of every
earlier micro-batch reads the discriminator the step started with.

Defaults (Stable Diffusion), as the reference README runs them: `attn2.to_k`/`attn2.to_v`
(preset attn2-kv), AdamW (betas 0.9/0.999, weight decay 0.01) at 4.8e-5 -- the reference's
--learning_rate 6e-6 times its --scale_lr factor (batch 8 x accumulation 1 x 1 process); our
lr is the one applied, never rescaled -- batch 8, 2000 steps of which the first 1000 train only
the discriminator (Adam, betas 0.5/0.999, lr 1e-4 for nudity and objects, 5e-4 for styles: the
catalogue's recipes), 1000 anchor images sampled with guidance 6 in 25 steps.

Where we differ, deliberately:
  * The PatchGAN (`--disc-layout`): "reference" is the official gan.py (a 3x3 map of logits
    on a 64x64 latent); on a latent under 32x32 (MiniSD's 16x16) its fourth stride-2 block leaves
    1x1, which its last 4x4 conv cannot read, so "auto" takes the "compact" layout there (three
    stride-2 blocks, then 3x3 convs: a 2x2 map on 16x16).
  * The discriminator sees real and fake in one batch (one batch-norm statistic for both) and
    scores the UNet's output with its running statistics; the reference normalises each with
    its own batch's statistics, which hid their difference on MiniSD (the discriminator loss
    stayed at 2 ln 2, chance). Its labels are swapped (real 1, fake 0; the reference: 0, 1), the
    same losses. It steps before the UNet within a step (the reference: after), so the UNet is
    scored by a discriminator that has seen the current fake.
  * The anchor images are the base model's own final latents (erasure/selfdata.py, shared with
    SalUn's cache), sampled by the pipeline's own scheduler, with no flip or rescale
    augmentation (the reference: DPM-Solver images, horizontal flips, and for objects random
    rescaling with "a far away"/"zoomed in" prefixes on the forget caption).
  * The first UNet step is step `--disc-warmup` (the reference's `global_step > warm_up` starts
    one step later: 999 UNet steps of 2000 instead of 1000).
  * `adv_guidance` (MiniSD's default 5, its sampling guidance; 0, the paper's, elsewhere): the
    discriminator compares *guided* predictions, x0 of eps_u + w (eps_c - eps_u), the frozen
    model's under the anchor prompt against the trained model's under the forget prompt. Images
    are sampled with classifier-free guidance, which multiplies whatever difference is left
    between the two conditional predictions by w. Unguided, the discriminator settled at chance
    while a quarter to a third of MiniSD's circle prompts still drew circles (nine settings,
    docs/doco.md); guided, the same run erases circle (docs/erasure-minisd.md).
    The stronger adversarial signal needs more retention on MiniSD: retain_weight 3 with the
    full projection there; at 2 the cross object drifted to 0.938 in one of two runs.
  * MiniSD's measured recipe also keeps `retain_batch="shared"` (the retention loss on the
    adversarial batch's own x_t, noise and t; the reference draws a separate batch) and
    `retain_on="anchor+retain"`, which also denoises images of retain prompts (the other
    objects' captions): MiniSD's to_k/to_v are shared by every prompt, and with the anchor alone
    the other objects drifted (measured: square 0.83, cross 0.92 object accuracy after an
    otherwise default MiniSD run).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import SelfDataConfig, doc
from ..errors import UserError
from ..prompt_files import read_prompts, shipped_prompt_file
from ..registry import register_method
from ..sampling import cfg as cfg_noise
from ..sampling import predicted_x0
from .base import Trainer

# the reference's style captions: r uniform in {0, 1, 2}; r == 0 takes the first form, else the second
STYLE_FORMS = ("{caption}, in the style of {concept}", "in {concept}'s style, {caption}")
STYLE_DRAWS = (0, 1, 1)
# the reference layout's four stride-2 blocks and last 4x4 conv need a latent at least this wide
REFERENCE_MIN_SIDE = 32


# ----------------------------------------------------------------------------- prompt pairs
def said_as(caption: str, word: str, anchor: str) -> str:
    """`caption` with its anchor said as `word`: "{anchor}" filled in (with "a" turned into "an"
    before a vowel), else the anchor's own word replaced wherever it stands as a word."""
    if "{anchor}" in caption:
        def article(m: re.Match) -> str:
            return f"{m.group(1)}{'n' if word[:1].lower() in 'aeiou' else ''} {word}"
        return re.sub(r"\b([aA]) \{anchor\}", article, caption).replace("{anchor}", word)
    return re.sub(rf"\b{re.escape(anchor)}\b", lambda _: word, caption, flags=re.IGNORECASE)


def caption_pairs(captions: list[str], concept: str, anchor: str, pairing: str,
                  source: str = "--captions") -> tuple[list[str], list[list[str]]]:
    """(anchor prompts, forget forms): anchor prompt i is caption i with its anchor filled in;
    forms[f][i] is its forget caption in form f (swap: one form; style: STYLE_FORMS)."""
    anchors = []
    for n, caption in enumerate(captions, 1):
        if pairing == "swap" and "{anchor}" not in caption and \
                not re.search(rf"\b{re.escape(anchor)}\b", caption, flags=re.IGNORECASE):
            raise UserError(f"{source}: caption {n} ('{caption}') does not name the anchor '{anchor}'; write the "
                            "anchor's word in every caption (or {anchor} where it goes), or pass the --anchor it names")
        anchors.append(said_as(caption, anchor, anchor) if "{anchor}" in caption else caption)
    if pairing == "swap":
        return anchors, [[said_as(c, concept, anchor) for c in captions]]
    return anchors, [[form.replace("{concept}", concept).replace("{caption}", a) for a in anchors]
                     for form in STYLE_FORMS]


def read_captions(setting: str) -> list[str]:
    """The captions of `--captions`: a path, else a file name in erasure/data/prompts."""
    return read_prompts(Path(shipped_prompt_file(setting)).expanduser(), "--captions",
                        "a file name in erasure/data/prompts (e.g. doco_objects.txt)")


# ----------------------------------------------------------------------------- the discriminator
def disc_layout_for(setting: str, latent_side: int) -> str:
    """The PatchGAN layout `--disc-layout` asks for on a latent `latent_side` wide."""
    if setting == "auto":
        return "reference" if latent_side >= REFERENCE_MIN_SIDE else "compact"
    if setting == "reference" and latent_side < REFERENCE_MIN_SIDE:
        raise UserError(f"--disc-layout reference needs latents at least {REFERENCE_MIN_SIDE} wide (these are "
                        f"{latent_side}: its last 4x4 conv would see 1x1); use --disc-layout compact or auto")
    return setting


class PatchDiscriminator(nn.Module):
    """PatchGAN over latents: one real/fake logit per patch. Both layouts open with 4x4 stride-2
    conv blocks of 64, 128, 256 (and 512) channels, batch norm on all but the first, LeakyReLU 0.2.

    reference: four such blocks, then a 4x4 stride-1 conv (padding 1) to one channel, as the
               official gan.py: 64x64 -> 32 -> 16 -> 8 -> 4 -> a 3x3 map (SD at 512 px).
    compact:   three such blocks, then 3x3 stride-1 convs (padding 1) to 512 channels (batch
               norm, LeakyReLU) and to one: 16x16 -> 8 -> 4 -> a 2x2 map (MiniSD), where the
               reference layout would be left with 1x1 before its last conv.
    """

    def __init__(self, in_channels: int = 4, width: int = 64, layout: str = "reference") -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, kernel: int, stride: int, norm: bool = True) -> list[nn.Module]:
            norm_layer = [nn.BatchNorm2d(cout)] if norm else []
            return [nn.Conv2d(cin, cout, kernel, stride, 1), *norm_layer, nn.LeakyReLU(0.2)]

        layers = [*block(in_channels, w, 4, 2, norm=False), *block(w, 2 * w, 4, 2), *block(2 * w, 4 * w, 4, 2)]
        if layout == "reference":
            layers += [*block(4 * w, 8 * w, 4, 2), nn.Conv2d(8 * w, 1, 4, 1, 1)]
        elif layout == "compact":
            layers += [*block(4 * w, 8 * w, 3, 1), nn.Conv2d(8 * w, 1, 3, 1, 1)]
        else:
            raise UserError(f"--disc-layout must be auto, reference or compact (got '{layout}')")
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))


# ----------------------------------------------------------------------------- concept-preserving gradient
def project_conflict(g_adv: torch.Tensor, g_ret: torch.Tensor, mode: str, scale: float = 1.0) -> torch.Tensor:
    """One tensor's g_adv without its part that opposes g_ret (Sec. 3.3). full: the projection
    <g_adv, g_ret>/|g_ret|^2 g_ret; reference: `scale` x cos(g_adv, g_ret) x the unit vector of
    g_ret, with the official code's 1e-8 in both norms (it removes exactly the conflicting
    component only when |g_adv| = 1: a shorter g_adv is pushed past it into g_ret's direction,
    a longer one keeps some conflict); none: g_adv."""
    if mode == "reference":
        unit_ret = g_ret / (torch.linalg.vector_norm(g_ret) + 1e-8)
        cos = (g_adv / (torch.linalg.vector_norm(g_adv) + 1e-8) * unit_ret).sum()
        # torch.where, not `if cos < 0`: no device-to-host sync per tensor, the same numbers
        return torch.where(cos < 0, g_adv - scale * cos * unit_ret, g_adv)
    if mode == "none":
        return g_adv
    dot = (g_adv * g_ret).sum()
    ret_norm2 = (g_ret * g_ret).sum().clamp_min(1e-30)
    return torch.where(dot < 0, g_adv - dot / ret_norm2 * g_ret, g_adv)


def clip_global_norm(grads: list[torch.Tensor], max_norm: float = 1.0) -> list[torch.Tensor]:
    """`grads` scaled down together to a global 2-norm of at most `max_norm`, as
    torch.nn.utils.clip_grad_norm_ (the reference's accelerator.clip_grad_norm_) does."""
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return [g * coef for g in grads]


def concept_preserving_gradient(g_adv: list[torch.Tensor], g_ret: list[torch.Tensor], mode: str,
                                retain_weight: float) -> list[torch.Tensor]:
    """The UNet's gradient, per trained tensor, from the adversarial and retention gradients
    (`--projection`; the module docstring has the three rules)."""
    if mode == "reference":  # clip both, then step on the corrected g_adv alone
        g_adv, g_ret = clip_global_norm(g_adv), clip_global_norm(g_ret)
        return [project_conflict(a, r, "reference", retain_weight) for a, r in zip(g_adv, g_ret)]
    return [project_conflict(a, r, mode) + retain_weight * r for a, r in zip(g_adv, g_ret)]


@dataclass
class DoCoConfig(SelfDataConfig):
    target: str = doc("weights that train (paper: attn2.to_k and attn2.to_v)", default="attn2-kv")
    steps: int = doc("steps in all, discriminator warm-up included (reference: 2000)", default=2000)
    lr: float = doc("AdamW learning rate of the UNet as applied, never rescaled by the batch (reference: "
                    "--learning_rate 6e-6 x --scale_lr's batch 8 = 4.8e-5)", default=4.8e-5)
    batch_size: int = doc("anchor images per step (reference: 8)", default=8)
    disc_lr: float = doc("discriminator learning rate (reference: 1e-4 nudity/objects, 5e-4 styles)", default=1e-4)
    disc_warmup: int = doc("first steps that train only the discriminator (reference: 1000)", default=1000)
    disc_layout: str = doc("PatchGAN layout: reference (the official one: four stride-2 blocks, a 3x3 map on a "
                           "64x64 latent), compact (three, then 3x3 convs; for latents under 32x32) or auto "
                           "(reference where the latent allows it)", default="auto")
    captions: str = doc("anchor captions the prompt pairs are made from: a .txt/.csv prompt file or a file name in "
                        "erasure/data/prompts (doco_objects.txt, doco_clothed.txt, doco_painting.txt); each names the "
                        "anchor (or holds {anchor} where it goes). Empty: the world's prompts against the anchor",
                        default="")
    pairing: str = doc("how a forget caption is made from an anchor caption: swap (the anchor's word said as the "
                       "concept: objects, nudity) or style ('CAPTION, in the style of CONCEPT' / \"in CONCEPT's "
                       "style, CAPTION\")", default="swap")
    retain_weight: float = doc("weight of the retention gradient: full/none add retain_weight x g_ret; reference "
                               "applies none and scales the removed component by it (the reference's --lambda_, 1)",
                               default=1.0)
    projection: str = doc("concept-preserving gradient: reference (the official code: clip to norm 1, subtract "
                          "cos x unit g_ret, step on g_adv alone), full (the paper's projection, plus "
                          "retain_weight x g_ret) or none", default="reference")
    retain_batch: str = doc("the retention loss's batch: independent (its own draw of anchor images, noise and t, "
                            "as the reference) or shared (the adversarial batch's x_t, noise and t)",
                            default="independent")
    n_anchor: int = doc("self-generated anchor images (reference: 1000 from its 200 captions)", default=1000)
    retain_on: str = doc("what the retention loss denoises: anchor (the paper: the anchor images) or anchor+retain "
                         "(also images of retain prompts: on MiniSD the other objects' captions)", default="anchor")
    n_retain: int = doc("self-generated retain images when --retain-on anchor+retain", default=128)
    adv_guidance: float = doc("classifier-free guidance of the predicted x0 the discriminator compares: 0 = the "
                              "conditional prediction alone (the paper); MiniSD: 5, its sampling guidance", default=0.0)
    data_guidance: float = doc("CFG scale of the self-generated anchor images (reference: 6; 0 = the model's "
                               "default)", default=6.0)
    data_steps: int = doc("sampling steps of the self-generated anchor images (reference: 25; 0 = the model's "
                          "default)", default=25)

    world_defaults: ClassVar[dict] = {"mini": {"steps": 400, "disc_warmup": 100, "lr": 1e-3, "disc_lr": 5e-4,
                                               "n_anchor": 128, "retain_on": "anchor+retain", "adv_guidance": 5.0,
                                               "retain_weight": 3.0, "projection": "full", "retain_batch": "shared",
                                               "data_guidance": 0.0, "data_steps": 0}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.projection not in ("full", "reference", "none"):
            raise UserError(f"--projection must be full, reference or none (got '{self.projection}')")
        if not 0 <= self.disc_warmup < self.steps:
            raise UserError(f"--disc-warmup must be in [0, --steps) (got {self.disc_warmup} of {self.steps})")
        if self.retain_on not in ("anchor", "anchor+retain"):
            raise UserError(f"--retain-on must be anchor or anchor+retain (got '{self.retain_on}')")
        if self.retain_batch not in ("independent", "shared"):
            raise UserError(f"--retain-batch must be independent or shared (got '{self.retain_batch}')")
        if self.disc_layout not in ("auto", "reference", "compact"):
            raise UserError(f"--disc-layout must be auto, reference or compact (got '{self.disc_layout}')")
        if self.pairing not in ("swap", "style"):
            raise UserError(f"--pairing must be swap or style (got '{self.pairing}')")
        if self.captions.strip() and self.concept_prompts != "auto":
            raise UserError("--captions and --concept-prompts both say what the forget prompts are; pass one of them")
        if self.n_anchor < 1:
            raise UserError("--n-anchor must be at least 1")
        if self.adv_guidance < 0:
            raise UserError(f"--adv-guidance must be >= 0 (0: unguided, the paper; got {self.adv_guidance})")


class DoCoTrainer(Trainer):
    config_cls = DoCoConfig

    def make_optimizer(self) -> torch.optim.Optimizer:
        # the reference's AdamW: betas 0.9/0.999, weight decay 1e-2, eps 1e-8 (train.py's defaults)
        return self.adam(self.trainable.values(), self.config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)

    def prompt_pairs(self) -> tuple[list[str], list[list[str]]]:
        """(anchor prompts, forget forms): forms[f][i] is the forget prompt of anchor prompt i in
        form f, over every concept of the run."""
        cfg: DoCoConfig = self.config
        captions = read_captions(cfg.captions.strip()) if cfg.captions.strip() else None
        anchors: list[str] = []
        forms: list[list[str]] = []
        for concept in cfg.concepts:
            if captions is None:
                f, a = self.anchored_prompts(concept)
                concept_forms = [f]
            else:
                a, concept_forms = caption_pairs(captions, concept, self.anchor_of(concept), cfg.pairing)
            anchors += a
            forms = [x + y for x, y in zip(forms, concept_forms)] if forms else concept_forms
        return anchors, forms

    def setup(self) -> None:
        cfg: DoCoConfig = self.config
        self.frozen_unet = self.frozen_copy(self.unet)
        anchor_prompts, forget_forms = self.prompt_pairs()
        self.pairs = (anchor_prompts, forget_forms)
        # anchor image i comes from anchor prompt i mod P; its forget twin is forget prompt i mod P (in a drawn form)
        self.anchor_data = self.self_data(anchor_prompts, cfg.n_anchor)
        self.c_anchor = self.embed(anchor_prompts)
        self.c_forget_forms = torch.stack([self.embed(f) for f in forget_forms])  # (forms, P, 77, D)
        self.c_forget = self.c_forget_forms[0]  # the first (swap: the only) form
        self.form_draws = STYLE_DRAWS if len(forget_forms) > 1 else (0,)
        self.retain_data = None
        if cfg.retain_on == "anchor+retain":
            retain_prompts = [p for c in cfg.concepts for p in self.retain_prompts(c)]
            self.retain_data, self.c_retain = self.self_data(retain_prompts, cfg.n_retain), self.embed(retain_prompts)
        self.c_uncond = self.embed([""])
        self.disc_layout = disc_layout_for(cfg.disc_layout, min(self.anchor_data.latents.shape[-2:]))
        self.discriminator = PatchDiscriminator(self.unet.config.in_channels, layout=self.disc_layout).to(self.device)
        self.disc_optimizer = self.adam(self.discriminator.parameters(), cfg.disc_lr, betas=(0.5, 0.999))
        # the micro-batches' gradients of this optimizer step, kept apart until the projection
        self.adv_grads: list[torch.Tensor] | None = None
        self.ret_grads: list[torch.Tensor] | None = None

    def forget_conditions(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """The forget prompts' embeddings of a batch: one form (swap), or a form drawn per image (style)."""
        if len(self.form_draws) == 1:
            return self.c_forget[prompt_ids]
        forms = torch.tensor(self.form_draws)[self.randint(len(self.form_draws), (len(prompt_ids),))].to(self.device)
        return self.c_forget_forms[forms, prompt_ids]

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
        # data parallel: the global batch is drawn whole and each process keeps its rows
        x0, prompt_ids = self.draw_batch(self.anchor_data, self.global_batch(cfg.batch_size))
        c_f = self.forget_conditions(prompt_ids)
        x_t, t, noise = self.noised(x0)
        x_t, t, noise, prompt_ids, c_f = self.shard(x_t, t, noise, prompt_ids, c_f)
        c_a = self.c_anchor[prompt_ids]
        with torch.no_grad():  # "real": the original model's clean-latent prediction for the anchor
            real = self.predicted_x0(self.frozen_unet, x_t, t, c_a)
        fake = self.predicted_x0(self.unet, x_t, t, c_f)

        # discriminator step: real -> 1, fake -> 0, in one batch so that batch norm sees both
        # (normalising each alone removes exactly the statistics that tell them apart). Under a
        # launcher every process gathers the global batch's rows and takes the same step, so the
        # batch statistics are the global batch's, as in one process.
        self.discriminator.train()
        disc_input = torch.cat([distributed.gather_rows(real), distributed.gather_rows(fake.detach())])
        logits_real, logits_fake = self.discriminator(disc_input).chunk(2)
        disc_loss = bce(logits_real, True) + bce(logits_fake, False)
        if self.micro_step == 0:
            self.disc_optimizer.zero_grad(set_to_none=True)
        (disc_loss / cfg.grad_accum).backward()
        if self.micro_step == cfg.grad_accum - 1:  # one step per optimizer step, on the micro-batches' mean
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)  # its gradients are not held through the UNet's
        self.discriminator.eval()  # the UNet's adversarial loss reads the running statistics
        logs = {"disc": disc_loss.item()}
        if self.step < cfg.disc_warmup:  # warm-up: the UNet does not move
            return disc_loss.detach(), logs

        # UNet: fool the discriminator (adversarial loss), keep denoising the anchor (retention)
        adv_loss = bce(self.discriminator(fake), True)
        if cfg.retain_batch == "shared":
            retain_loss = F.mse_loss(self.unet(x_t, t, encoder_hidden_states=c_a).sample.float(), noise)
        else:  # the reference's class batch: its own anchor images, noise and t, under their captions
            retain_loss = self.denoising_loss(self.anchor_data, self.c_anchor, cfg.batch_size)
        if self.retain_data is not None:
            retain_loss = (retain_loss + self.denoising_loss(self.retain_data, self.c_retain, cfg.batch_size)) / 2
        params = list(self.trainable.values())
        g_adv = torch.autograd.grad(adv_loss, params, allow_unused=True)
        g_ret = torch.autograd.grad(retain_loss, params, allow_unused=True)
        adv = [(torch.zeros_like(p) if g is None else g) / cfg.grad_accum for p, g in zip(params, g_adv)]
        ret = [(torch.zeros_like(p) if g is None else g) / cfg.grad_accum for p, g in zip(params, g_ret)]
        if self.adv_grads is None:
            self.adv_grads, self.ret_grads = adv, ret
        else:
            self.adv_grads = [a + b for a, b in zip(self.adv_grads, adv)]
            self.ret_grads = [a + b for a, b in zip(self.ret_grads, ret)]
        return (adv_loss + cfg.retain_weight * retain_loss).detach(), {**logs, "adv": adv_loss.item(),
                                                                       "retain": retain_loss.item()}

    def before_optimizer_step(self) -> None:
        """The step's gradient: the concept-preserving combination of the accumulated g_adv and g_ret."""
        if self.adv_grads is None:  # a warm-up step: the UNet has no gradient
            return
        cfg: DoCoConfig = self.config
        if self.processes > 1:  # the global batch's g_adv and g_ret: the projection is not linear
            distributed.mean_(self.adv_grads + self.ret_grads)
        grads = concept_preserving_gradient(self.adv_grads, self.ret_grads, cfg.projection, cfg.retain_weight)
        for p, g in zip(self.trainable.values(), grads):
            p.grad = g
        self.adv_grads = self.ret_grads = None

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.network_state("disc", self.discriminator, self.disc_optimizer)

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_network_state("disc", self.discriminator, self.disc_optimizer, tensors)


register_method("doco", DoCoConfig, DoCoTrainer)
