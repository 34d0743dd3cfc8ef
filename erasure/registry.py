"""Methods registered by name: one config class + one trainer class each (peft's habit).

A leaf: method files import it and register into it; it imports no method. A method file ends
with `register_method("esd-x", ESDConfig, ESDTrainer, target="esd-x")`; names are lower-case and
unique, and an unknown name fails at once with the list of known ones. The built-in methods are
found like plug-ins, by module name (`BUILTIN_MODULES`, imported on first lookup), and
third-party packages add theirs through the `erasure.methods` entry point (erasure/plugins.py).
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

    def default_config(self, base_model: str = "sd") -> Any:
        """The config with every default for `base_model` (its world's column; a name that is no
        model folder gets the papers' defaults), concept left as 'x'."""
        return self.config_cls.from_dict({"method": self.name, "concept": "x", "base_model": base_model})


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, trainer_cls: type, **defaults: Any) -> None:
    if name != name.lower() or not name:
        raise ValueError(f"method names are lower-case: {name!r}")
    if name in _METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    _METHODS[name] = MethodSpec(name, config_cls, trainer_cls, defaults)


# the modules that register the built-in methods (each registers itself on import)
BUILTIN_MODULES = ("erasure.trainers.esd", "erasure.trainers.salun", "erasure.trainers.doco",
                   "erasure.trainers.advunlearn", "erasure.trainers.sfd", "erasure.trainers.composed")


def _load_builtin_methods() -> None:
    import importlib
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def _add_plugin(name: str, obj: Any) -> None:
    """An `erasure.methods` entry point: a MethodSpec, a Trainer subclass (config from its
    config_cls, defaults from its optional `method_defaults`), or a module/function that
    registered the method itself (erasure/plugins.py)."""
    import inspect

    if isinstance(obj, MethodSpec):
        register_method(name, obj.config_cls, obj.trainer_cls, **obj.defaults)
    elif inspect.isclass(obj) and hasattr(obj, "config_cls"):
        register_method(name, obj.config_cls, obj, **getattr(obj, "method_defaults", {}))
    elif callable(obj) and not inspect.ismodule(obj) and name not in _METHODS:
        obj()
    if name not in _METHODS:
        raise ValueError(f"entry point '{name}' registered no method of that name")


def _load_plugin_methods() -> None:
    from .plugins import load_group
    load_group("erasure.methods", _add_plugin)


def method_names() -> list[str]:
    _load_builtin_methods()
    _load_plugin_methods()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    _load_builtin_methods()
    key = (name or "").strip().lower()
    if key not in _METHODS:
        _load_plugin_methods()
    if key not in _METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(sorted(_METHODS))}")
    return _METHODS[key]
