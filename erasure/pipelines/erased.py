"""ErasedPipeline: a diffusers StableDiffusionPipeline that loads an erasure onto its base.

    pipe = ErasedPipeline.from_pretrained("out/circle")            # base named in the manifest
    pipe = ErasedPipeline.from_pretrained("out/circle", base_model="/models/sd-v1-4")
    image = pipe("a red circle").images[0]

In every other respect it is a StableDiffusionPipeline (call signature, schedulers, `.to()`,
dtype). Given a plain Stable Diffusion folder (or 'minisd') it loads that unchanged.
"""
from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline

from ..errors import UserError
from ..io import apply_erasure, is_erasure_dir, read_manifest
from ..models import resolve_model


class ErasedPipeline(StableDiffusionPipeline):
    erasure_manifest: dict | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, base_model: str | None = None, **kwargs):
        path = Path(str(pretrained_model_name_or_path))
        kwargs.setdefault("local_files_only", True)
        if path.is_dir() and is_erasure_dir(path):
            manifest = read_manifest(path)
            base = resolve_model(base_model or manifest["base_model"])
            pipe = super().from_pretrained(base, **kwargs)
            apply_erasure(pipe, path, manifest)
            pipe.erasure_manifest = manifest
            return pipe
        if base_model is not None:
            raise UserError(f"{path} is not an erasure folder (no erasure_config.json), so base_model= does not apply")
        return super().from_pretrained(resolve_model(pretrained_model_name_or_path), **kwargs)

    def to_standard(self) -> StableDiffusionPipeline:
        """The same components as a plain StableDiffusionPipeline (what `erasure export` saves)."""
        return StableDiffusionPipeline(**self.components, requires_safety_checker=False)
