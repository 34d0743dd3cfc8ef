"""Shared diffusion primitives as plain functions: prompt encoding, classifier-free guidance,
predicted x0, and DDIM sampling that stops at a chosen step (what ESD needs). No pipeline is
patched: these call the UNet directly with a diffusers DDIMScheduler's timesteps."""
from __future__ import annotations

import torch


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device | str,
                   grad: bool = False) -> torch.Tensor:
    """(B, 77, D) last hidden states, as Stable Diffusion conditions on them; `grad=True` keeps the
    graph (a method that trains the text encoder)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.set_grad_enabled(grad):
        return text_encoder(ids)[0]


def cfg(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: eps_u + w (eps_c - eps_u)."""
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), a_t = alphas_cumprod[t]; t: (B,) long."""
    a = alphas_cumprod.to(x_t.device)[t].view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    return (x_t - (1 - a).sqrt() * eps) / a.sqrt()


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = alphas_cumprod.to(x0.device)[t].view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@torch.no_grad()
def ddim_trajectory(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor, guidance: float,
                    num_steps: int, stop_after: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run DDIM (eta 0) with CFG from `latents` (pure noise, (B, C, h, w)) for `num_steps` steps,
    stopping after `stop_after` steps (default: all). Returns ([x_T, x_after_1, ...], timesteps):
    trajectory[k] is the latent *before* denoising step k, whose timestep is timesteps[k]."""
    scheduler.set_timesteps(num_steps, device=latents.device)
    timesteps = scheduler.timesteps
    stop_after = num_steps if stop_after is None else stop_after
    x = latents * scheduler.init_noise_sigma
    trajectory = [x]
    cond2 = torch.cat([uncond.expand(len(x), -1, -1), cond.expand(len(x), -1, -1)])
    for k in range(stop_after):
        t = timesteps[k]
        eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=cond2).sample.chunk(2)
        x = scheduler.step(cfg(eps_u, eps_c, guidance), t, x).prev_sample
        trajectory.append(x)
    return trajectory, timesteps


@torch.no_grad()
def ddim_trajectories(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, latents: torch.Tensor,
                      guidance: float, num_steps: int, stop_after: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`ddim_trajectory` where each latent stops on its own: latent i runs `stop_after[i]` steps
    (0 to num_steps), and the batch shrinks as latents finish, so no UNet call is spent past the
    last step a caller needs. Also keeps the two noise predictions of every step taken, which
    are the frozen model's eps(x_t, t, uncond) and eps(x_t, t, cond) at that trajectory point
    (ESD's target needs them there again). `cond`: (1 or B, 77, D).

    Returns (trajectory (num_steps + 1, B, C, h, w): row k is the latent before DDIM step k, zero
    past a latent's stop; eps_uncond and eps_cond (num_steps, B, C, h, w), zero past the stop,
    row k the predictions at row k of the trajectory; timesteps)."""
    scheduler.set_timesteps(num_steps, device=latents.device)
    timesteps = scheduler.timesteps
    stop_after = stop_after.to(latents.device)
    x = latents * scheduler.init_noise_sigma
    trajectory = x.new_zeros(num_steps + 1, *x.shape)
    eps_uncond, eps_cond = x.new_zeros(num_steps, *x.shape), x.new_zeros(num_steps, *x.shape)
    trajectory[0] = x
    cond = cond.expand(len(x), -1, -1)
    for k in range(int(stop_after.max()) if len(x) else 0):
        active = (stop_after > k).nonzero().squeeze(1)
        xa, t = trajectory[k, active], timesteps[k]
        conds = torch.cat([uncond.expand(len(active), -1, -1), cond[active]])
        eps_u, eps_c = unet(torch.cat([xa, xa]), t, encoder_hidden_states=conds).sample.chunk(2)
        eps_uncond[k, active], eps_cond[k, active] = eps_u.to(x.dtype), eps_c.to(x.dtype)
        trajectory[k + 1, active] = scheduler.step(cfg(eps_u, eps_c, guidance), t, xa).prev_sample.to(x.dtype)
    return trajectory, eps_uncond, eps_cond, timesteps
