"""The continuous soft-prompt attack AdvUnlearn's inner loop uses (Zhang et al., NeurIPS 2024).

k free vectors in token-embedding space, prepended after the start token, are optimised to make
the (erased) model regenerate the concept:

    min_adv  MSE(eps_theta(x_t, t, E(adv + c_f)), eps*(x_t, t, c_f))

with eps* the original model's prediction for the plain concept prompt. Defaults: k = 1,
30 Adam steps at lr 1e-3, initialised from the embeddings of random vocabulary tokens. Unlike
the reference, gradients are zeroed before every step (the reference accumulated them across
steps). `fast=True` is "Fast AT": signed-gradient steps of size lr.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .text import encode_with_prefix


def soft_prompt_attack(unet, tokenizer, text_encoder, prompts: list[str], x_t: torch.Tensor, t: torch.Tensor,
                       target_eps: torch.Tensor, n_tokens: int = 1, steps: int = 30, lr: float = 1e-3,
                       fast: bool = False, generator: torch.Generator | None = None) -> tuple[torch.Tensor, list[float]]:
    """Returns (adversarial embeddings (k, D), detached; the loss before each step)."""
    table = text_encoder.get_input_embeddings().weight.detach()
    start = torch.randint(0, table.shape[0], (n_tokens,), generator=generator)
    adv = table[start.to(table.device)].clone().float().requires_grad_(True)
    opt = None if fast else torch.optim.Adam([adv], lr=lr)
    losses = []
    for _ in range(steps):
        cond = encode_with_prefix(tokenizer, text_encoder, prompts, adv)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond).sample.float(), target_eps)
        grad, = torch.autograd.grad(loss, [adv])
        losses.append(loss.item())
        with torch.no_grad():
            if fast:
                adv -= lr * grad.sign()
            else:
                adv.grad = grad
                opt.step()
                adv.grad = None
    return adv.detach(), losses
