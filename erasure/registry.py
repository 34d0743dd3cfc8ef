"""Methods registered by name: one config class + one trainer class each (peft's habit).

A method file ends with `register_method("esd-x", ESDConfig, ESDTrainer, target="esd-x")`; names
are lower-case and unique, and an unknown name fails at once with the list of known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    trainer_cls: type
    defaults: dict[str, Any] = field(default_factory=dict)  # config fields this name presets

    @property
    def description(self) -> str:
        """One line: the first line of the method module's docstring (the paper's title)."""
        import sys
        doc = sys.modules[self.trainer_cls.__module__].__doc__ or ""
        return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""

    def default_config(self, minisd: bool = False) -> Any:
        """The config with every default (the paper's, or MiniSD's column), concept left as 'x'."""
        from .config import EraseConfig
        return EraseConfig.from_dict({"method": self.name, "concept": "x", "base_model": "minisd" if minisd else "sd"})


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, trainer_cls: type, **defaults: Any) -> None:
    if name != name.lower() or not name:
        raise ValueError(f"method names are lower-case: {name!r}")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    _METHODS[name] = MethodSpec(name, config_cls, trainer_cls, defaults)


def _load_builtin_methods() -> None:
    from . import trainers  # noqa: F401  (each module registers itself on import)


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    key = (name or "").strip().lower()
    if key not in _METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[key]
