"""Third-party methods, metrics and suites, found through Python entry points (no fork needed).

A package adds them in its pyproject.toml:

    [project.entry-points."erasure.methods"]
    my-method = "my_pkg.trainer:MyTrainer"    # a Trainer subclass (its config_cls is the config;
                                              # optional class attribute method_defaults = {...}),
                                              # or a module / function that calls register_method
    [project.entry-points."erasure.metrics"]
    my-metric = "my_pkg.metric:MyMetric"      # a Metric subclass (its `name`, else the entry name)
    [project.entry-points."erasure.suites"]
    my-suite = "my_pkg.suites:make_suite"     # a Suite, a function returning one, or a suite YAML path

Once installed, `erasure ls`, `erasure train --method`, `erasure eval --suite/--metrics` and
`erasure bench --methods` see them like the built-in ones. A plug-in that fails to import is
skipped with a warning naming it; the built-ins keep working.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib import metadata
from typing import Any

GROUPS = ("erasure.methods", "erasure.metrics", "erasure.suites")
_loaded: dict[str, set[str]] = {g: set() for g in GROUPS}


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of `group` (first of each name wins, as on sys.path)."""
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def load_group(group: str, add: Callable[[str, Any], None]) -> None:
    """Load every not-yet-loaded entry point of `group` and hand (name, object) to `add`."""
    for ep in entry_points(group):
        if ep.name in _loaded[group]:
            continue
        _loaded[group].add(ep.name)
        try:
            add(ep.name, ep.load())
        except Exception as e:  # noqa: BLE001 (a broken plug-in must not take the built-ins down)
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            warnings.warn(f"erasure plug-in {group} '{ep.name}' ({ep.value}, from {dist}) failed to load: "
                          f"{type(e).__name__}: {e}", stacklevel=2)
