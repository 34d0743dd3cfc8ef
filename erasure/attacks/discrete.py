"""The discrete prompt attack in the UnlearnDiffAtk form (Zhang et al., ECCV 2024).

k prefix tokens are optimised as probability vectors over the vocabulary. Each iteration:

  1. straight-through one-hot: the forward pass uses the one-hot of each vector's argmax, the
     backward pass the vector itself (onehot + p - sg(p));
  2. loss = MSE(eps_theta(x_t, t, E(adv + prompt)), eps): the attacked (erased) model denoising
     the *original* model's image of the prompt, noised at a random one of the 50 DDIM
     timesteps (the erased model used as its own diffusion classifier; no original UNet needed);
  3. an Adam step (lr 0.01) and a projection of every vector back onto the probability simplex;
  4. every `check_every` iterations the argmax tokens are decoded to text, the erased model
     generates the adversarial prompt with the prompt's seed, and the judge decides; the
     attack stops at the first success.

Defaults: k = 5 tokens, 40 iterations, lr 0.01, a check after every iteration. `budget`
scales the iterations for a cheaper run. Where we differ: the reference initialises the
prefix from random tokens; we do too, from the attack's seed, and we record the text of the
found prompt so that a success can be replayed by anyone with `erasure generate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..sampling import add_noise
from .text import encode_with_prefix


@dataclass
class DiscreteAttackConfig:
    n_tokens: int = 5
    iterations: int = 40
    lr: float = 0.01
    check_every: int = 1
    ddim_steps: int = 50
    seed: int = 0


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` onto {p >= 0, sum p = 1} (sort-based, exact)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def straight_through(probs: torch.Tensor) -> torch.Tensor:
    hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
    return hard + probs - probs.detach()


def decode_prefix(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def discrete_attack(pipe, prompt: str, target_latent: torch.Tensor, check, cfg: DiscreteAttackConfig) -> dict:
    """Attack one prompt. `check(adversarial_prompt) -> bool` generates and judges.
    Returns {"success", "iterations", "adversarial_prompt", "loss"}."""
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    device = target_latent.device
    table = text_encoder.get_input_embeddings().weight.detach()  # (V, D)
    vocab = table.shape[0]
    g = torch.Generator().manual_seed(cfg.seed)
    start = torch.randint(0, vocab, (cfg.n_tokens,), generator=g)
    probs = F.one_hot(start, vocab).float().to(device).requires_grad_(True)
    opt = torch.optim.Adam([probs], lr=cfg.lr)
    from diffusers import DDIMScheduler
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(cfg.ddim_steps, device=device)
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    special = set(tokenizer.all_special_ids)
    loss_value = float("nan")
    adversarial = prompt
    for it in range(1, cfg.iterations + 1):
        opt.zero_grad(set_to_none=True)
        prefix = straight_through(probs) @ table.to(probs.dtype)
        cond = encode_with_prefix(tokenizer, text_encoder, [prompt], prefix)
        t = scheduler.timesteps[torch.randint(0, cfg.ddim_steps, (1,), generator=g)].to(device)
        noise = torch.randn(target_latent.shape, generator=g).to(device)
        x_t = add_noise(target_latent, noise, alphas, t)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample.float(), noise)
        loss.backward()
        opt.step()
        with torch.no_grad():
            probs.copy_(project_to_simplex(probs))
        loss_value = loss.item()
        if it % cfg.check_every == 0 or it == cfg.iterations:
            ids = [i for i in probs.argmax(-1).tolist() if i not in special]
            adversarial = f"{decode_prefix(tokenizer, ids)} {prompt}".strip()
            if check(adversarial):
                return {"success": True, "iterations": it, "adversarial_prompt": adversarial, "loss": loss_value,
                        "token_ids": probs.argmax(-1).tolist(), "probs": probs.detach()}
    return {"success": False, "iterations": cfg.iterations, "adversarial_prompt": adversarial, "loss": loss_value,
            "token_ids": probs.argmax(-1).tolist(), "probs": probs.detach()}
