"""Find and load base models: the embedded MiniSD, a local Stable Diffusion folder, or a hub id
already in the local cache. Never touches the network."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import UserError

MINISD_NAME = "minisd"
MINISD_PATH = Path(__file__).parent / "worlds" / "mini" / "weights" / "minisd"
SD_COMPONENTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")

# Sampling defaults per model family: MiniSD's were picked on its judge (docs/minisd.md).
MINISD_DEFAULTS = {"num_inference_steps": 25, "guidance_scale": 5.0, "height": 64, "width": 64}
SD_DEFAULTS = {"num_inference_steps": 50, "guidance_scale": 7.5}


def _check_sd_folder(path: Path) -> Path:
    if not (path / "model_index.json").exists():
        raise UserError(f"{path} is not a diffusers Stable Diffusion folder (no model_index.json); "
                        "pass a folder saved by StableDiffusionPipeline.save_pretrained, or --model minisd")
    missing = [c for c in SD_COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise UserError(f"{path} lacks the Stable Diffusion part(s) {', '.join(missing)}; "
                        "a base model needs unet/, text_encoder/, tokenizer/, vae/ and scheduler/")
    return path


def is_minisd(path: str | os.PathLike) -> bool:
    """Whether a resolved model folder is the shipped MiniSD."""
    return Path(path).resolve() == MINISD_PATH.resolve()


def resolve_model(model: str | os.PathLike) -> Path:
    """'minisd' -> the shipped folder; a local folder -> itself (checked); a hub id -> its snapshot
    in the local Hugging Face cache (offline only)."""
    name = str(model)
    if name.lower() == MINISD_NAME:
        if not (MINISD_PATH / "model_index.json").exists():
            raise UserError(f"the MiniSD weights are missing from {MINISD_PATH}; reinstall erasure, or train them with "
                            "python -m erasure.worlds.mini.train")
        return MINISD_PATH
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {name} is a file; pass a diffusers Stable Diffusion folder, an erasure folder or 'minisd'")
        return _check_sd_folder(path)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
            snapshot = Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise UserError(f"model '{name}' is neither a local folder nor in the local Hugging Face cache; erasure never "
                            "downloads: fetch it once where there is network, then pass its folder") from None
        return _check_sd_folder(snapshot)
    raise UserError(f"no model folder at '{name}'; pass a diffusers Stable Diffusion folder, an erasure folder or 'minisd'")


SAMPLING_FILE = "erasure_sampling.json"


def default_sampling(path: str | os.PathLike) -> dict:
    """Steps and guidance a model folder asks for in erasure_sampling.json; MiniSD's own; else SD's.
    Image size is left to the pipeline (unet.sample_size x the VAE factor)."""
    path = Path(path)
    if (path / SAMPLING_FILE).exists():
        return json.loads((path / SAMPLING_FILE).read_text())
    if path.resolve() == MINISD_PATH.resolve():
        return {k: v for k, v in MINISD_DEFAULTS.items() if k not in ("height", "width")}
    return dict(SD_DEFAULTS)


# A one-step generator (an SFD erasure) samples in one UNet call without classifier-free guidance:
# the guidance of its teacher is distilled into it (erasure/pipelines/one_step.py).
ONE_STEP_SAMPLING = {"num_inference_steps": 1, "guidance_scale": 1.0}


def is_one_step(model: str | os.PathLike) -> bool:
    """Whether `model` is a one-step generator: an erasure whose manifest says so, or a folder
    whose scheduler is erasure's OneStepScheduler (an exported one)."""
    from .io import is_erasure_dir, read_manifest
    path = Path(str(model))
    if path.is_dir() and is_erasure_dir(path):
        return bool((read_manifest(path).get("sampling") or {}).get("one_step"))
    config = path / "scheduler" / "scheduler_config.json"
    return path.is_dir() and config.exists() and json.loads(config.read_text()).get("_class_name") == "OneStepScheduler"


def model_sampling(model: str | os.PathLike) -> dict:
    """Steps and guidance to sample `model` with: a one-step generator's (1 step, guidance 1),
    else its base model's (`default_sampling`)."""
    sampling = default_sampling(base_of(model))
    return {**sampling, **ONE_STEP_SAMPLING} if is_one_step(model) else sampling


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def base_of(model: str | os.PathLike) -> Path:
    """The base model folder behind `model`: itself, or the base an erasure folder names."""
    from .io import is_erasure_dir, read_manifest
    if Path(str(model)).is_dir() and is_erasure_dir(model):
        return resolve_model(read_manifest(model)["base_model"])
    return resolve_model(model)


def load_pipeline(model: str | os.PathLike = MINISD_NAME, device: str | None = None, dtype: torch.dtype = torch.float32,
                  attention: str = "auto"):
    """A diffusers StableDiffusionPipeline from a base model (see `resolve_model`) or an erasure
    folder (an ErasedPipeline), offline, without the safety checker (evaluation judges raw output)."""
    from diffusers import StableDiffusionPipeline

    from .io import is_erasure_dir
    from .pipelines import ErasedPipeline  # also makes erasure's OneStepScheduler loadable (exported SFD folders)
    if Path(str(model)).is_dir() and is_erasure_dir(model):
        loader, path = ErasedPipeline, Path(str(model))
    else:
        loader, path = StableDiffusionPipeline, resolve_model(model)
    pipe = loader.from_pretrained(path, dtype=dtype, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False, local_files_only=True)
    pipe = pipe.to(pick_device(device))
    set_attention_backend(pipe, attention)
    pipe.set_progress_bar_config(disable=True)
    return pipe
