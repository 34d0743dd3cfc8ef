"""erasure: remove a concept from a text-to-image diffusion model, prove it gone, ship the result.

    from erasure import ErasedPipeline, train
    erasure_dir = train(method="esd-x", concept="circle", out="out/no-circle")
    pipe = ErasedPipeline.from_pretrained(erasure_dir)
"""
from __future__ import annotations

from .version import __version__

__all__ = ["ErasedPipeline", "load_erasure", "EraseConfig", "train", "method_names", "get_method", "load_pipeline", "model_sampling",
           "read_manifest", "resolve_model", "is_minisd", "UserError", "TrainingCancelled",
           "TrainingInterrupted", "TrainingDiverged", "__version__"]

# public name -> (module, attribute), imported on first use (diffusers is heavy)
_LAZY = {
    "ErasedPipeline": (".pipelines", "ErasedPipeline"),
    "load_erasure": (".pipelines", "load_erasure"),
    "EraseConfig": (".config", "EraseConfig"),
    "method_names": (".registry", "method_names"),
    "get_method": (".registry", "get_method"),
    "load_pipeline": (".pipelines.loading", "load_pipeline"),
    "model_sampling": (".model_ref", "model_sampling"),
    "resolve_model": (".model_ref", "resolve_model"),
    "is_minisd": (".worlds", "is_minisd"),
    "read_manifest": (".erasure_files", "read_manifest"),
    "UserError": (".errors", "UserError"),
    "TrainingCancelled": (".trainers.base", "TrainingCancelled"),
    "TrainingInterrupted": (".trainers.base", "TrainingInterrupted"),
    "TrainingDiverged": (".trainers.base", "TrainingDiverged"),
}


def train(out: str, resume: bool = False, callback=None, grid: bool = False, **settings):
    """Train a registered method (settings as in `erasure train`) and write the erasure to `out`.
    `callback(step, total, logs)` is called after every step; returning False cancels the run
    (TrainingCancelled), e.g. from a UI's Cancel button. `grid=True` also writes the before/after
    grid `out/comparison.png`, as `erasure train` does (its `--no-grid` is `grid=False`)."""
    from .config import EraseConfig
    from .registry import get_method

    config = EraseConfig.from_dict({"method": "esd-x", **settings})
    trainer = get_method(config.method).trainer_cls(config)
    path = trainer.train(out, resume=resume, callback=callback)
    if grid:
        from .eval.before_after import release, write_comparison
        write_comparison(path, config, release(trainer))
    return path


def __getattr__(name: str):  # heavy imports (diffusers) only when asked for
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attr)
    raise AttributeError(f"module 'erasure' has no attribute {name!r}")
