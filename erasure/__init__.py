"""erasure: remove a concept from a text-to-image diffusion model, prove it gone, ship the result.

    from erasure import ErasedPipeline, train
    erasure_dir = train(method="esd-x", concept="circle", out="out/no-circle")
    pipe = ErasedPipeline.from_pretrained(erasure_dir)
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ErasedPipeline", "EraseConfig", "train", "method_names", "__version__"]


def train(out: str, resume: bool = False, **settings):
    """Train a registered method (settings as in `erasure train`) and write the erasure to `out`."""
    from .config import EraseConfig
    from .registry import get_method

    config = EraseConfig.from_dict({"method": "esd-x", **settings})
    return get_method(config.method).trainer_cls(config).train(out, resume=resume)


def __getattr__(name: str):  # heavy imports (diffusers) only when asked for
    if name == "ErasedPipeline":
        from .pipelines import ErasedPipeline
        return ErasedPipeline
    if name == "EraseConfig":
        from .config import EraseConfig
        return EraseConfig
    if name == "method_names":
        from .registry import method_names
        return method_names
    raise AttributeError(f"module 'erasure' has no attribute {name!r}")
