"""Concept inversion (Pham et al., "Circumventing Concept Erasure Methods for Text-to-Image
Generative Models", ICLR 2024): textual inversion (Gal et al., ICLR 2023) of a new token against
the *erased* model, from images of the concept, then generation through the erased model with
that token in place of the concept's words.

A new token `<concept>` is added to the tokenizer; its embedding row v (initialised from the
embedding of `initializer`) is the only thing trained, with the diffusion loss of the attacked
model on the concept images x0 and captions c whose concept words are replaced by the token:

    min_v  E_(x0, c, t, eps) || eps - eps_theta(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, E(c[v])) ||^2      (TI eq. 2)

with z0 = VAE(x0) * scaling_factor and t uniform over the training timesteps. The erased UNet
and text encoder stay frozen; an erasure that only moved the concept's words lets v find
another way in.

Reference defaults (CCE esd/train.sh and diffusers' textual_inversion.py it builds on): 25
images, batch 4 x 4 accumulation, 5000 steps, lr 5e-3 scaled by the batch (0.08), constant,
AdamW (weight decay 1e-2). Our batch of 16 is one step (no accumulation: the same gradient).

Where we differ, deliberately: diffusers trains the whole embedding table and restores every
row but the new one after each step; we hand the new row alone to the optimiser (a forward hook
puts it in place), which is the same update without touching the other 49k rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..sampling import add_noise

TOKEN = "<concept>"


@dataclass
class InversionConfig:
    steps: int = 5000          # CCE: max_train_steps
    batch_size: int = 16       # CCE: 4 x 4 gradient accumulation
    lr: float = 0.08           # CCE: 5e-3, scaled by the batch of 16 (--scale_lr)
    weight_decay: float = 1e-2  # diffusers textual_inversion.py: adam_weight_decay
    n_images: int = 25         # CCE: num_train_images
    initializer: str = "object"  # the word the token starts from (CCE: a generic word, e.g. "art")
    seed: int = 0
    # MiniSD: 64 px images, a 16x16 latent, a text encoder of its own grammar
    world_defaults: ClassVar[dict] = {"mini": {"steps": 300, "lr": 0.02, "n_images": 64}}

    def budgeted(self, budget: float) -> InversionConfig:
        from dataclasses import replace
        return replace(self, steps=int(round(self.steps * budget)))


def add_placeholder(tokenizer, text_encoder, token: str = TOKEN, initializer: str = "object") -> int:
    """Add `token` to the tokenizer and a row for it to the text encoder's embedding table,
    initialised from `initializer`'s first token. Returns the token's id."""
    if tokenizer.add_tokens(token) == 0:
        raise ValueError(f"the tokenizer already has a token {token!r}")
    token_id = tokenizer.convert_tokens_to_ids(token)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    start = tokenizer(initializer, add_special_tokens=False).input_ids[:1] or [tokenizer.unk_token_id]
    with torch.no_grad():
        table = text_encoder.get_input_embeddings().weight
        table[token_id] = table[start[0]]
    return token_id


def invert(pipe, images: torch.Tensor, captions: list[str], cfg: InversionConfig, token: str = TOKEN,
           progress: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Learn `token`'s embedding against `pipe` (the attacked model) from `images` (N, 3, H, W)
    in [0, 1] and `captions` (each naming the token). The token is added to pipe's tokenizer and
    text encoder, and its row holds the result afterwards, so `pipe(prompt with token)` generates
    with it. Returns (the embedding (D,), float32; the loss of every step)."""
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    token_id = add_placeholder(tokenizer, text_encoder, token, cfg.initializer)
    table = text_encoder.get_input_embeddings()
    vector = table.weight[token_id].detach().float().clone().requires_grad_(True)
    opt = torch.optim.AdamW([vector], lr=cfg.lr, weight_decay=cfg.weight_decay)
    dev = unet.device
    alphas = pipe.scheduler.alphas_cumprod.to(dev)
    n_train = pipe.scheduler.config.num_train_timesteps
    with torch.no_grad():  # the images' latents, once
        latents = torch.cat([vae.encode((images[i:i + 16].to(dev, vae.dtype) * 2 - 1)).latent_dist.mean
                             for i in range(0, len(images), 16)]).float() * vae.config.scaling_factor
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(dev)
    generator = torch.Generator().manual_seed(cfg.seed)

    def hook(module, inputs, output):  # the new row from `vector`, so its gradient reaches it
        where = (inputs[0] == token_id).unsqueeze(-1)
        return torch.where(where, vector.to(output.dtype), output)

    handle = table.register_forward_hook(hook)
    losses = []
    try:
        for _ in tqdm(range(cfg.steps), desc="inversion", disable=not progress, dynamic_ncols=True):
            rows = torch.randint(0, len(latents), (cfg.batch_size,), generator=generator)
            z0 = latents[rows]
            noise = torch.randn(z0.shape, generator=generator).to(dev)
            t = torch.randint(0, n_train, (len(rows),), generator=generator).to(dev)
            cond = text_encoder(ids[rows.to(dev)])[0]
            eps = unet(add_noise(z0, noise, alphas, t).to(unet.dtype), t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(eps.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        handle.remove()
    with torch.no_grad():
        table.weight[token_id] = vector.detach().to(table.weight.dtype)
    return vector.detach().cpu(), losses
