"""Load a model as a diffusers pipeline on a device: the base model or an erasure of it, offline,
with the attention backend chosen for the device."""
from __future__ import annotations

import os

import torch

from ..errors import UserError
from ..model_ref import MINISD_NAME, ModelRef, resolve


def pick_device(device: str | None = None) -> torch.device:
    """`device`, or for None / "auto" CUDA when present, else the CPU; under a launcher with
    several processes, this process's own device (cuda:LOCAL_RANK)."""
    if device in (None, "auto"):
        from .. import distributed
        if distributed.launched():
            return distributed.device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device '{device}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if chosen.type == "cuda" and (not torch.cuda.is_available() or (chosen.index or 0) >= torch.cuda.device_count()):
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UserError(f"--device {device}: this machine has {found} CUDA device(s); use --device cpu or auto")
    if chosen.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {device}: erasure runs on cpu, cuda or mps")
    return chosen


def set_attention_backend(pipe, backend: str = "auto") -> str:
    """xformers memory-efficient attention on CUDA when installed, else PyTorch SDPA (diffusers'
    default AttnProcessor2_0). Returns the backend used."""
    if backend not in ("auto", "xformers", "sdpa"):
        raise UserError(f"unknown attention backend '{backend}'; choose auto, xformers or sdpa")
    on_cuda = pipe.device.type == "cuda"
    if backend in ("auto", "xformers") and on_cuda:
        try:
            import xformers  # noqa: F401
            pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except ImportError:
            if backend == "xformers":
                raise UserError("attention backend xformers needs: pip install 'erasure[xformers]'") from None
    elif backend == "xformers":
        raise UserError("xformers attention runs on CUDA only; use --attention sdpa on this device")
    from diffusers.models.attention_processor import AttnProcessor2_0
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def load_pipeline(model: "str | os.PathLike | ModelRef" = MINISD_NAME, device: str | None = None,
                  dtype: torch.dtype = torch.float32, attention: str = "auto"):
    """A diffusers StableDiffusionPipeline from a base model (see `model_ref.resolve_model`) or an
    erasure folder (an ErasedPipeline), offline, without the safety checker (evaluation judges raw
    output). Loading any pipeline module also makes erasure's OneStepScheduler loadable
    (exported SFD folders)."""
    from diffusers import StableDiffusionPipeline

    from .erased import ErasedPipeline
    ref = resolve(model)
    loader = ErasedPipeline if ref.is_erasure else StableDiffusionPipeline
    pipe = loader.from_pretrained(ref.path, dtype=dtype, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False, local_files_only=True, use_safetensors=True)
    pipe = pipe.to(pick_device(device))
    set_attention_backend(pipe, attention)
    pipe.set_progress_bar_config(disable=True)
    return pipe
