"""The continuous soft-prompt attack AdvUnlearn's inner loop uses (Zhang et al., NeurIPS 2024).

k free vectors in token-embedding space, prepended after the start token, are optimised to make
the (erased) model regenerate the concept:

    min_adv  E_(x_t, t) MSE(eps_theta(x_t, t, E(adv + c_f)), eps*(x_t, t, c_f))

with eps* the original model's prediction for the plain concept prompt. The reference takes every
attack step on a fresh draw: a new timestep, a new partial-DDIM x_t and its target
(`soft_prompt_attack_on_draws`, given a `draw` that makes one); `soft_prompt_attack` takes every
step on one fixed (x_t, t). Defaults: k = 1, 30 Adam steps at lr 1e-3, initialised from the
embeddings of random vocabulary tokens. `fast=True` is "Fast AT": signed-gradient steps of size lr.

Where we differ, deliberately: gradients are zeroed before every step. The reference calls
`backward()` without ever zeroing (AdvUnlearn train-scripts/utils/attack_util.py:204), so each of
its Adam steps follows the running sum of every earlier step's gradient, taken at other
timesteps; a step here follows its own draw's gradient, as in PGD.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .text import encode_with_prefix

# one attack step's data: (prompts, x_t, t, target eps), the prompts' rows matching x_t's
AttackDraw = Callable[[], tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]]
# (prompts, adversarial vectors (k, D)) -> (B, 77, D) text-encoder states
Encode = Callable[[list[str], torch.Tensor], torch.Tensor]


def soft_prompt_attack_on_draws(unet, tokenizer, text_encoder, draw: AttackDraw, n_tokens: int = 1, steps: int = 30,
                                lr: float = 1e-3, fast: bool = False, generator: torch.Generator | None = None,
                                encode: Encode | None = None) -> tuple[torch.Tensor, list[float]]:
    """`steps` attack steps, each on what `draw()` returns then. Returns (adversarial embeddings
    (k, D), detached; the loss before each step). `encode(prompts, adv)` places the vectors in
    the prompts (default: as a prefix, `encode_with_prefix`)."""
    if encode is None:
        def encode(prompts, vectors):
            return encode_with_prefix(tokenizer, text_encoder, prompts, vectors)
    table = text_encoder.get_input_embeddings().weight.detach()
    start = torch.randint(0, table.shape[0], (n_tokens,), generator=generator)
    adv = table[start.to(table.device)].clone().float().requires_grad_(True)
    opt = None if fast else torch.optim.Adam([adv], lr=lr)
    losses = []
    for _ in range(steps):
        prompts, x_t, t, target_eps = draw()
        cond = encode(prompts, adv)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample.float(), target_eps)
        grad, = torch.autograd.grad(loss, [adv])  # adv only: nothing reaches the model's .grad
        losses.append(loss.item())
        with torch.no_grad():
            if fast:
                adv -= lr * grad.sign()
            else:
                adv.grad = grad
                opt.step()
                adv.grad = None
    return adv.detach(), losses


def soft_prompt_attack(unet, tokenizer, text_encoder, prompts: list[str], x_t: torch.Tensor, t: torch.Tensor,
                       target_eps: torch.Tensor, n_tokens: int = 1, steps: int = 30, lr: float = 1e-3,
                       fast: bool = False, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    """Every step on this one (x_t, t) and its target. Returns (adversarial embeddings (k, D),
    detached; the loss before each step)."""
    return soft_prompt_attack_on_draws(unet, tokenizer, text_encoder, lambda: (prompts, x_t, t, target_eps),
                                       n_tokens=n_tokens, steps=steps, lr=lr, fast=fast, generator=generator)
