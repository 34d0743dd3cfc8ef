"""ErasedPipeline: a diffusers StableDiffusionPipeline that loads an erasure onto its base.

    pipe = ErasedPipeline.from_pretrained("out/circle")            # base named in the manifest
    pipe = ErasedPipeline.from_pretrained("out/circle", base_model="/models/sd-v1-4")
    image = pipe("a red circle").images[0]

`load_erasure(pipe, path)` applies an erasure to a pipeline the caller built, of any Stable
Diffusion-layout class (text-to-image, img2img, inpainting, ControlNet: anything with `unet` and
`text_encoder` components), with the same checks:

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained("/models/sd-v1-4")
    load_erasure(pipe, "out/nudity")

In every other respect it is a StableDiffusionPipeline (call signature, schedulers, `.to()`,
dtype). Given a plain Stable Diffusion folder (or a shipped model's name) it loads that unchanged.

One-step erasures (SFD: the manifest says `"sampling": {"one_step": true, "t_init": ...}`) get
a `OneStepScheduler` and sample in ONE UNet call: `pipe("a red circle")` defaults to
num_inference_steps=1 and guidance_scale=1.0 (no classifier-free guidance: the generator was
distilled from the guided teacher, so guidance is baked in; a caller may still pass a
guidance_scale). Asking for more steps is a UserError rather than a silent single step, and so
is sampling after swapping in another scheduler (`pipe.scheduler = DDIMScheduler(...)`): the
weights are a generator, not a denoiser, and a multi-step sampler would draw noise.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from diffusers import StableDiffusionPipeline

from ..errors import UserError
from ..erasure_files import apply_erasure, is_erasure_dir, read_manifest
from ..model_ref import manifest_base, resolve_model
from .one_step import OneStepScheduler

__all__ = ["ErasedPipeline", "load_erasure"]

_CALL_ARGS = list(inspect.signature(StableDiffusionPipeline.__call__).parameters)[1:]


class ErasedPipeline(StableDiffusionPipeline):
    erasure_manifest: dict | None = None

    @property
    def one_step(self) -> bool:
        """Whether this is a one-step generator (an SFD erasure, or a folder exported from one)."""
        manifest_says = bool(((self.erasure_manifest or {}).get("sampling") or {}).get("one_step"))
        return manifest_says or isinstance(self.scheduler, OneStepScheduler)

    def __call__(self, *args, **kwargs):
        if self.one_step:
            kwargs = {**dict(zip(_CALL_ARGS, args)), **kwargs}
            args = ()
            if not isinstance(self.scheduler, OneStepScheduler):
                raise UserError(f"this erasure is a one-step generator and samples with OneStepScheduler only "
                                f"(got {type(self.scheduler).__name__}); reload it or set "
                                f"pipe.scheduler = OneStepScheduler.from_base(pipe.scheduler.config, t_init)")
            if kwargs.get("num_inference_steps") is None:
                kwargs["num_inference_steps"] = 1
            kwargs.setdefault("guidance_scale", 1.0)
            if kwargs["num_inference_steps"] != 1:
                raise UserError(f"this erasure is a one-step generator (OneStepScheduler): sample with "
                                f"num_inference_steps=1 (got {kwargs['num_inference_steps']})")
        return super().__call__(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, base_model: str | None = None, **kwargs):
        path = Path(str(pretrained_model_name_or_path))
        refuse_code_loading(kwargs)
        kwargs.setdefault("local_files_only", True)
        kwargs["use_safetensors"] = True
        if path.is_dir() and is_erasure_dir(path):
            manifest = read_manifest(path)
            base = resolve_model(base_model or manifest_base(path, manifest))
            pipe = super().from_pretrained(base, **kwargs)
            apply_erasure(pipe, path, manifest)
            pipe.erasure_manifest = manifest
            sampling = manifest.get("sampling") or {}
            if sampling.get("one_step"):
                pipe.scheduler = OneStepScheduler.from_base(pipe.scheduler.config, int(sampling["t_init"]))
            return pipe
        if base_model is not None:
            raise UserError(f"{path} is not an erasure folder (no erasure_config.json), so base_model= does not apply")
        return super().from_pretrained(resolve_model(pretrained_model_name_or_path), **kwargs)

    def to_standard(self) -> StableDiffusionPipeline:
        """The same components as a plain StableDiffusionPipeline (what `erasure export` saves)."""
        return StableDiffusionPipeline(**self.components, requires_safety_checker=False)


def refuse_code_loading(kwargs: dict) -> None:
    """Loading a model never runs code it ships: `trust_remote_code` and `custom_pipeline` are
    refused rather than passed on to diffusers, and weights load from safetensors only."""
    for name in ("trust_remote_code", "custom_pipeline"):
        if kwargs.get(name):
            raise UserError(f"{name} is refused: erasure never runs code shipped with a model; load a standard "
                            "Stable Diffusion folder")
    if kwargs.get("use_safetensors") is False:
        raise UserError("use_safetensors=False is refused: erasure loads weights from safetensors files only "
                        "(convert pickles first: erasure import --allow-pickle, or safetensors.torch.save_file)")
    kwargs.pop("trust_remote_code", None)
    kwargs.pop("custom_pipeline", None)


def load_erasure(pipe, path: str | Path) -> dict:
    """Apply the erasure folder `path` to `pipe` in place and return its manifest.

    `pipe` is any diffusers pipeline with the Stable Diffusion layout (`unet`, `text_encoder`):
    StableDiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
    StableDiffusionControlNetPipeline, ... Every changed tensor must exist in the pipeline with
    the erasure's shape, and the file's dtypes must be those the manifest records (else a
    UserError naming the tensors); a pipeline whose base values of those tensors differ from the
    erasure's base gets a warning (erasure_files.apply_erasure). The manifest is kept as
    `pipe.erasure_manifest`. A one-step erasure (SFD) is a generator with its own scheduler and
    loads through ErasedPipeline only, which samples it in one step; it is refused here.
    """
    path = Path(path)
    if not path.is_dir() or not is_erasure_dir(path):
        raise UserError(f"{path} is not an erasure folder (no erasure_config.json); give a folder erasure train or "
                        "erasure import wrote")
    missing = [c for c in ("unet", "text_encoder") if getattr(pipe, c, None) is None]
    if missing:
        raise UserError(f"{type(pipe).__name__} has no {' or '.join(missing)}; load_erasure applies to Stable "
                        "Diffusion-layout pipelines (text-to-image, img2img, inpaint, ControlNet)")
    manifest = read_manifest(path)
    if (manifest.get("sampling") or {}).get("one_step"):
        raise UserError(f"{path} is a one-step generator (SFD) that samples with its own scheduler; load it with "
                        "ErasedPipeline.from_pretrained, or erasure export it to a standard folder")
    apply_erasure(pipe, path, manifest)
    pipe.erasure_manifest = manifest
    return manifest
