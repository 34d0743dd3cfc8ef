"""SalUn: weight saliency for machine unlearning (Fan et al., ICLR 2024), diffusion part.

1. Data: the base model draws its own forget set D_f (for the forget prompts) and retain set
   D_r (erasure/selfdata.py); the paper uses 800 + 800 images.
2. Saliency mask (Eq. 5-6): accumulate, over one pass of D_f, the gradient of the forgetting
   loss -MSE(eps, eps_cfg(x_t, t, c_f)) with eps_cfg = (1 + w) eps(c_f) - w eps(c_0), w = 7.5;
   rank |grad| over all UNet weights at once and keep the top `mask_ratio` (mask = 1).
3. Training (Eq. 8, the relabelling form the paper uses for diffusion): on D_f noised to x_t,

       L_f = MSE(eps_theta(x_t, t, c_f), sg[eps_theta(x_t, t, c_a)])

   (the target is the *current* model under the anchor c_a, detached), plus alpha times the
   ordinary denoising loss on D_r. The gradient is multiplied by the mask before every step,
   so only salient weights ever change.

Defaults are the paper's for classes (lr 1e-5, batch 8, alpha 0.5, 5 epochs of 800 images =
500 steps) and, for "nudity", its nudity settings (alpha 0.1, 1 epoch = 100 steps).

Where we differ, deliberately:
  * The mask is computed once per (base model, forget data, mask settings) and cached; `--mask`
    reuses a saved one. It is written beside the erasure as `salun_mask.safetensors`.
  * The reference code once compared a string to the mask and never applied it, and once
    reused one batch for every step; here every step draws a fresh batch, and a test checks
    that masked weights do not move.
  * On MiniSD each forget prompt's anchor keeps its colour and style ("a red disk" ->
    "a red square"), and D_r holds the other objects' captions (the world's, erasure/worlds/), which
    is what keeps the other objects intact on a model this small.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import SelfDataConfig, doc
from ..errors import UserError
from ..files import load_tensors, save_tensors
from ..registry import register_method
from .base import Trainer

MASK_FILE = "salun_mask.safetensors"


@dataclass
class SalUnConfig(SelfDataConfig):
    target: str = doc("weights the mask ranks (SalUn: every UNet weight)", default="unet")
    steps: int = doc("optimizer steps (paper, classes: 5 epochs x 800 images / batch 8 = 500)", default=500)
    lr: float = doc("Adam learning rate (paper: 1e-5)", default=1e-5)
    batch_size: int = doc("forget and retain images per step (paper: 8)", default=8)
    alpha: float = doc("weight of the retain loss (paper: 0.5 for classes, 0.1 for nudity)", default=0.5)
    mask_ratio: float = doc("fraction of weights the saliency mask keeps trainable (paper: 0.5)", default=0.5)
    mask_guidance: float = doc("w of the CFG noise prediction whose loss gradient ranks the weights (paper: 7.5)",
                               default=7.5)
    mask: str = doc("a saved salun_mask.safetensors to reuse instead of computing one", default="")
    n_forget: int = doc("self-generated forget images (paper: 800)", default=800)
    n_retain: int = doc("self-generated retain images (paper: 800)", default=800)

    # MiniSD: fewer self-generated images and steps so data + mask + training fit in minutes on a CPU
    world_defaults: ClassVar[dict] = {"mini": {"n_forget": 128, "n_retain": 128, "steps": 300, "lr": 1e-4}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise UserError(f"--mask-ratio must be in (0, 1] (got {self.mask_ratio})")
        if self.n_forget < 1 or self.n_retain < 1:
            raise UserError("--n-forget and --n-retain must be at least 1")
        if self.alpha < 0:
            raise UserError("--alpha must be >= 0")


class SalUnTrainer(Trainer):
    config_cls = SalUnConfig

    def setup(self) -> None:
        cfg: SalUnConfig = self.config
        forget_prompts, anchor_prompts, retain_prompts = [], [], []
        for concept in cfg.concepts:
            f, a = self.anchored_prompts(concept)
            forget_prompts += f
            anchor_prompts += a
            retain_prompts += self.retain_prompts(concept)
        self.forget_data = self.self_data(forget_prompts, cfg.n_forget)
        self.retain_data = self.self_data(retain_prompts, cfg.n_retain)
        self.c_forget, self.c_anchor = self.embed(forget_prompts), self.embed(anchor_prompts)
        self.c_retain, self.c_empty = self.embed(retain_prompts), self.embed([""])
        self.mask = self.load_or_compute_mask()

    # ------------------------------------------------------------------ step 2: the saliency mask
    def mask_key(self) -> str:
        cfg: SalUnConfig = self.config
        ident = [str(self.forget_data.path), cfg.target, cfg.mask_ratio, cfg.mask_guidance, cfg.seed, len(self.forget_data)]
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:20]

    def load_or_compute_mask(self) -> dict[str, torch.Tensor]:
        cfg: SalUnConfig = self.config
        path = self.cache_dir / "salun_masks" / f"{self.mask_key()}.safetensors"
        source = cfg.mask or (str(path) if path.exists() else "")
        if source:
            mask = load_tensors(source, self.device)
            missing = sorted(set(self.trainable) - set(mask))
            if missing:
                raise UserError(f"--mask {source} does not cover {len(missing)} trained tensor(s), e.g. {missing[0]}; "
                                "it was made for another model or --target")
            return {k: mask[k].bool() for k in self.trainable}
        mask = self.saliency_mask()
        save_tensors(path, {k: v.to(torch.uint8) for k, v in mask.items()})
        return mask

    def saliency_mask(self) -> dict[str, torch.Tensor]:
        """Eq. 5-6: top `mask_ratio` of |grad of the CFG forgetting loss| over D_f, ranked globally."""
        cfg: SalUnConfig = self.config
        grads = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in self.trainable.items()}
        data = self.forget_data
        # its own random stream: the training draws must not depend on whether the mask was cached
        generator = torch.Generator().manual_seed(cfg.seed + 7919)
        for start in tqdm(range(0, len(data), cfg.batch_size), desc="SalUn saliency mask", dynamic_ncols=True):
            x0 = data.latents[start:start + cfg.batch_size].to(self.device)
            c_f = self.c_forget[data.prompt_ids[start:start + cfg.batch_size].to(self.device)]
            x_t, t, noise = self.noised(x0, generator)
            with self.autocast():
                eps_f = self.unet(x_t, t, encoder_hidden_states=c_f).sample.float()
                eps_0 = self.unet(x_t, t, encoder_hidden_states=self.c_empty.expand(len(x0), -1, -1)).sample.float()
            eps_cfg = (1 + cfg.mask_guidance) * eps_f - cfg.mask_guidance * eps_0
            loss = -F.mse_loss(eps_cfg, noise)
            for (k, p), g in zip(self.trainable.items(), torch.autograd.grad(loss, list(self.trainable.values()))):
                grads[k] += g.float()
        scores = torch.cat([g.abs().flatten() for g in grads.values()])
        keep = max(1, math.ceil(cfg.mask_ratio * scores.numel()))
        # the keep-th largest score: ties at the threshold may keep a few more than asked
        threshold = torch.topk(scores, keep, sorted=False).values.min()
        return {k: g.abs() >= threshold for k, g in grads.items()}

    # ------------------------------------------------------------------ step 3: masked relabelling
    def compute_loss(self):
        cfg: SalUnConfig = self.config
        x0, prompt_ids = self.draw_batch(self.forget_data, cfg.batch_size)
        x_t, t, _ = self.noised(x0)
        with torch.no_grad():  # sg[eps_theta(x_t, t, c_a)]: the current model's anchor prediction, detached
            target = self.unet(x_t, t, encoder_hidden_states=self.c_anchor[prompt_ids]).sample.float()
        forget_loss = F.mse_loss(self.unet(x_t, t, encoder_hidden_states=self.c_forget[prompt_ids]).sample.float(), target)

        retain_loss = self.denoising_loss(self.retain_data, self.c_retain, cfg.batch_size)
        loss = forget_loss + cfg.alpha * retain_loss
        return loss, {"forget": forget_loss.item(), "retain": retain_loss.item()}

    def before_optimizer_step(self) -> None:
        for k, p in self.trainable.items():
            if p.grad is not None:
                p.grad.mul_(self.mask[k])

    def save(self, out_dir):
        # before the manifest, which is written last and marks the folder complete
        save_tensors(Path(out_dir) / MASK_FILE, {k: v.to(torch.uint8) for k, v in self.mask.items()})
        return super().save(out_dir)


register_method("salun", SalUnConfig, SalUnTrainer)
