"""OneStepScheduler: the diffusers scheduler of a one-step generator (an SFD erasure).

An SFD generator G maps noise to a clean latent in one UNet call (erasure/trainers/sfd.py):

    x_T = sqrt(1 - a) z,   z ~ N(0, I),   a = alphas_cumprod[t_init]
    x_0 = (x_T - sqrt(1 - a) eps_G(x_T, t_init, c)) / sqrt(a)

In scheduler terms: one timestep, t_init; the pipeline's starting latents are z scaled by
`init_noise_sigma` = sqrt(1 - a) (what the reference feeds its generator: DDPMScheduler.add_noise
of a zero image, so the UNet input is exactly x_T); `scale_model_input` is the identity; and
`step()` returns the predicted x_0 as `prev_sample`. The noise schedule (betas) is the base
model's, copied into this scheduler's config, so `alphas_cumprod` equals the base scheduler's.

`set_timesteps` accepts one step only: asking a one-step generator for 25 steps would run the
same single denoising call and silently return the same image, so it is an error that says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # also how diffusers' loader finds our from_pretrained
from diffusers.utils import BaseOutput

from ..errors import UserError

# base scheduler settings that define the noise schedule (copied by `from_base`)
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr", "prediction_type")


@dataclass
class OneStepSchedulerOutput(BaseOutput):
    prev_sample: torch.Tensor            # the generator's clean latent x_0 (the sampling result)
    pred_original_sample: torch.Tensor   # the same tensor, under the name other schedulers use


class OneStepScheduler(SchedulerMixin, ConfigMixin):
    """One-step sampling at `t_init` with the base model's noise schedule (see the module docstring)."""

    order = 1
    _compatibles: ClassVar[list] = []

    @register_to_config
    def __init__(self, t_init: int = 625, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                 beta_end: float = 0.012, beta_schedule: str = "scaled_linear", trained_betas=None,
                 rescale_betas_zero_snr: bool = False, prediction_type: str = "epsilon"):
        if not 1 <= t_init <= num_train_timesteps - 1:
            raise UserError(f"t_init must be in [1, {num_train_timesteps - 1}] (got {t_init})")
        if prediction_type != "epsilon":
            raise UserError(f"OneStepScheduler supports epsilon-prediction models only (got {prediction_type})")
        schedule = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                                 beta_schedule=beta_schedule, trained_betas=trained_betas,
                                 rescale_betas_zero_snr=rescale_betas_zero_snr)
        self.alphas_cumprod = schedule.alphas_cumprod
        a = self.alphas_cumprod[t_init]
        self.init_noise_sigma = float((1 - a).sqrt())
        self.num_inference_steps = 1
        self.timesteps = torch.tensor([t_init], dtype=torch.long)

    @classmethod
    def from_base(cls, base_config, t_init: int) -> OneStepScheduler:
        """The one-step scheduler over a base scheduler's noise schedule (its config or the scheduler)."""
        config = dict(getattr(base_config, "config", base_config))
        return cls(t_init=t_init, **{k: config[k] for k in SCHEDULE_KEYS if k in config})

    def set_timesteps(self, num_inference_steps: int | None = 1, device: str | torch.device | None = None, **kwargs):
        if kwargs.get("timesteps") is not None or kwargs.get("sigmas") is not None:
            raise UserError("OneStepScheduler has one fixed timestep (t_init); custom timesteps/sigmas do not apply")
        if num_inference_steps not in (None, 1):
            raise UserError(f"this is a one-step generator (OneStepScheduler, t_init {self.config.t_init}): sample with "
                            f"num_inference_steps=1 and guidance_scale=1.0 (got num_inference_steps={num_inference_steps})")
        self.timesteps = torch.tensor([self.config.t_init], dtype=torch.long, device=device)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **kwargs):
        """x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), returned as the previous (and final) sample."""
        t = int(timestep)
        a = self.alphas_cumprod[t].to(device=sample.device, dtype=torch.float32)
        x0 = ((sample.float() - (1 - a).sqrt() * model_output.float()) / a.sqrt()).to(sample.dtype)
        if not return_dict:
            return (x0,)
        return OneStepSchedulerOutput(prev_sample=x0, pred_original_sample=x0)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
