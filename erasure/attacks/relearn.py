"""Relearning: fine-tune the erased model for k steps on a handful of images of the concept and
see whether it comes back (the relearning attack of the unlearning literature: "a few
fine-tuning steps bring the concept back"; for diffusion, e.g. Suriyakumar et al. 2024,
"Unstable Unlearning"). The loss is the plain diffusion loss on (image, caption) pairs:

    min_theta  E_(x0, c, t, eps) || eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, E(c)) ||^2

`params` chooses what is fine-tuned: "unet" (every UNet weight: what a user who fine-tunes a
downloaded model does), "text_encoder", or "changed" (only the tensors the erasure changed,
which an attacker can read from the erasure file). The attack is judged after each of
`checkpoints` steps, so its result is an ASR as a function of k (k = 0: the erasure as
shipped).

Defaults: Adam at lr 1e-5 (Stable Diffusion fine-tuning's usual rate), batch 4, 25 images;
MiniSD (a 200x smaller model, trained at 1e-4) at lr 1e-4.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from ..sampling import add_noise

PARAMS = ("unet", "text_encoder", "changed")


@dataclass
class RelearnConfig:
    checkpoints: list[int] = field(default_factory=lambda: [0, 10, 50, 200])  # judged after k steps
    lr: float = 1e-5
    batch_size: int = 4
    n_images: int = 25
    params: str = "unet"
    seed: int = 0
    world_defaults: ClassVar[dict] = {"mini": {"lr": 1e-4}}

    def __post_init__(self) -> None:
        if self.params not in PARAMS:
            raise UserError(f"unknown relearn params '{self.params}'; choose one of {', '.join(PARAMS)}")
        if not self.checkpoints or any(k < 0 for k in self.checkpoints):
            raise UserError("relearn checkpoints are step counts >= 0, e.g. 0,10,50,200")
        self.checkpoints = sorted(set(int(k) for k in self.checkpoints))

    def budgeted(self, budget: float) -> RelearnConfig:
        from dataclasses import replace
        return replace(self, checkpoints=sorted({int(round(k * budget)) for k in self.checkpoints}))


def trained_parameters(pipe, params: str, changed: list[str] | None = None) -> dict[str, torch.nn.Parameter]:
    """The parameters relearning updates, keyed as erasure files key them ("unet.<name>")."""
    out = {}
    for component in ("unet", "text_encoder"):
        for name, p in getattr(pipe, component).named_parameters():
            key = f"{component}.{name}"
            if params == component or (params == "changed" and changed is not None and key in changed):
                out[key] = p
    if not out:
        raise UserError("relearning found no parameter to train: params 'changed' needs an erasure "
                        "(base models changed nothing); use params unet")
    return out


def relearn(pipe, images: torch.Tensor, captions: list[str], cfg: RelearnConfig,
            on_checkpoint: Callable[[int], None], changed: list[str] | None = None, progress: bool = True
            ) -> list[float]:
    """Fine-tune `pipe` in place on `images` (N, 3, H, W) in [0, 1] with `captions`, calling
    `on_checkpoint(k)` after k steps for every k of cfg.checkpoints (k = 0 before any step).
    Returns the loss of every step."""
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    trained = trained_parameters(pipe, cfg.params, changed)
    for p in trained.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(list(trained.values()), lr=cfg.lr)
    dev = unet.device
    alphas = pipe.scheduler.alphas_cumprod.to(dev)
    n_train = pipe.scheduler.config.num_train_timesteps
    with torch.no_grad():
        latents = torch.cat([vae.encode((images[i:i + 16].to(dev, vae.dtype) * 2 - 1)).latent_dist.mean
                             for i in range(0, len(images), 16)]).float() * vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(dev)
    generator = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    last = max(cfg.checkpoints)
    bar = tqdm(total=last, desc="relearn", disable=not progress, dynamic_ncols=True)
    for step in range(last + 1):
        if step in cfg.checkpoints:
            unet.eval(), text_encoder.eval()
            on_checkpoint(step)
        if step == last:
            break
        rows = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
        noise = torch.randn(latents[rows].shape, generator=generator).to(dev)
        t = torch.randint(0, n_train, (len(rows),), generator=generator).to(dev)
        with torch.set_grad_enabled(True):
            cond = text_encoder(ids[rows.to(dev)])[0]
            eps = unet(add_noise(latents[rows], noise, alphas, t).to(unet.dtype), t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(eps.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.update(1)
    bar.close()
    for p in trained.values():
        p.requires_grad_(False)
    return losses
