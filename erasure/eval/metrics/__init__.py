"""Metrics registered by name (lm-evaluation-harness's habit): each one documents its protocol
and returns a JSON-able dict with that protocol beside the numbers.

A metric is a class with `name`, a config of keyword settings, and

    compute(images, prompts, expected) -> {"summary": {...}, "per_image": [...], "protocol": {...}}

`images`: (N, 3, H, W) float in [0, 1] on the CPU; `prompts`: the N prompts the images were
generated from (a prompt repeats once per image); `expected`: N dicts of what the suite's rows
say each image should show (e.g. {"object": "circle"}; may be empty). Heavy dependencies are
imported inside `compute` so that a missing extra fails only when that metric is used, with the
install command in the message. Third-party packages add metrics through the `erasure.metrics`
entry point (erasure/plugins.py).

The built-in metrics, one module each in this package: mini_classifier, erasure_rate (with
retention), nudenet, clip_score, clip_zero_shot, fid (with kid).
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import UserError

_METRICS: dict[str, type["Metric"]] = {}


class Metric:
    name: str = ""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def check(self) -> None:
        """Fail on missing weights or settings before any image is generated."""

    def judge(self) -> dict[str, Any] | None:
        """The judge this metric reads images with, for the result's harness
        (erasure.harness.judge_file: name, weight file and its hash, settings); None if none."""
        return None

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        raise NotImplementedError


def register_metric(cls: type[Metric]) -> type[Metric]:
    if not cls.name or cls.name != cls.name.lower() or cls.name in _METRICS:
        raise ValueError(f"bad or duplicate metric name {cls.name!r}")
    _METRICS[cls.name] = cls
    return cls


def metric_names() -> list[str]:
    _load_builtin_metrics()
    _load_plugin_metrics()
    return sorted(_METRICS)


def get_metric(name: str, **settings: Any) -> Metric:
    _load_builtin_metrics()
    if name not in _METRICS:
        _load_plugin_metrics()
    if name not in _METRICS:
        raise UserError(f"unknown metric '{name}'; choose one of: {', '.join(sorted(_METRICS))}")
    return _METRICS[name](**settings)


def _add_plugin(name: str, cls: Any) -> None:
    """An `erasure.metrics` entry point: a Metric subclass (named by its `name`, else the entry's)."""
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise ValueError(f"entry point '{name}' is not a Metric subclass")
    if not cls.name:
        cls.name = name
    if cls.name not in _METRICS:
        register_metric(cls)


def _load_plugin_metrics() -> None:
    from ...plugins import load_group
    load_group("erasure.metrics", _add_plugin)


def _load_builtin_metrics() -> None:
    import importlib
    for module in ("mini_classifier", "erasure_rate", "nudenet", "clip_score", "clip_zero_shot", "fid"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # a metric module not written yet, not a missing extra
            if e.name != f"{__name__}.{module}":
                raise
