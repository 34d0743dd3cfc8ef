"""The base config every method extends: one dataclass, fields documented, validated on creation,
JSON round-trip dispatching on `method`. CLI flags are generated from the fields (cli.py), so the
help text, the README and the code cannot disagree about a name or a default."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import UserError, parse_bool  # noqa: F401 (parse_bool: config's public name too)


def doc(help: str, **kw) -> Any:
    """A dataclass field with its help text (shown by `erasure train --help`)."""
    default = kw.pop("default", dataclasses.MISSING)
    factory = kw.pop("default_factory", dataclasses.MISSING)
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


SAVE_DTYPES = ("base", "float32", "float16", "bfloat16")


@dataclass
class EraseConfig:
    method: str = doc("registered method name, e.g. esd-x", default="")
    concept: str = doc("concept(s) to erase; several separated by commas: 'circle, star'", default="")
    concept_prompts: str = doc("prompts that express the concept in training: auto (the model's world decides: "
                               "MiniSD, its captions naming the concept; Stable Diffusion, the catalogue's name of the "
                               "concept, e.g. nudity for nude, else its text), word "
                               "(the concept text only), or a .txt/.csv prompt file (erasure/worlds/)", default="auto")
    anchor: str = doc("what the concept should become (methods with an anchor; empty = the method's default)", default="")
    base_model: str = doc("'minisd', a diffusers Stable Diffusion folder, or a cached hub id", default="minisd")
    target: str = doc("weight preset that trains (see erasure/targets.py)", default="")
    steps: int = doc("optimizer steps", default=1000)
    lr: float = doc("learning rate", default=1e-5)
    lr_schedule: str = doc("learning rate over the run: constant (the papers) or cosine (decays to 0 at the last step)",
                           default="constant")
    ema: float = doc("if > 0, save an exponential moving average of the trained weights with this decay "
                     "(e.g. 0.99) instead of the last step's", default=0.0)
    batch_size: int = doc("samples per step", default=1)
    grad_accum: int = doc("gradient accumulation micro-steps per optimizer step", default=1)
    seed: int = doc("seed for every random draw of the run", default=0)
    dtype: str = doc("precision: auto (bfloat16 on CUDA, float32 elsewhere), float32, or bfloat16 (autocast, frozen "
                     "weights in bf16, trained weights kept in fp32)", default="auto")
    device: str = doc("auto, cpu, cuda, cuda:1, ...", default="auto")
    attention: str = doc("attention backend: auto (xformers on CUDA if installed, else SDPA), xformers, sdpa", default="auto")
    checkpoint_every: int = doc("save a resumable checkpoint every N steps (0 = never)", default=100)
    gradient_checkpointing: str = doc("recompute activations in the backward pass instead of keeping them (the "
                                      "trained UNet, every UNet a backward passes through, a trained text encoder): "
                                      "less memory, more time, the same result. auto (on for a UNet over 300M "
                                      "parameters: Stable Diffusion; off for MiniSD), true or false", default="auto",
                                      takes_bool=True)
    optimizer: str = doc("Adam's implementation: auto (adam), adam (torch's, the papers'), adam8bit (bitsandbytes' "
                         "8-bit states: 2 bytes per weight instead of 8), adam-offload (torchao: states and step on "
                         "the CPU; CUDA only) or adam-sharded (under a launcher each process keeps the states of "
                         "1/N of the weights: torch's ZeroRedundancyOptimizer, ZeRO stage 1)", default="auto")
    save_dtype: str = doc("dtype of the tensors the erasure files store: base (the base model's weights' dtype), "
                          "float32, float16 or bfloat16", default="base")

    # Defaults that differ by world, applied under what the user set (from_dict):
    # world_defaults[world name] (erasure/worlds/: MiniSD, "mini", is ~200x smaller than SD 1.4
    # and its runs must finish in minutes on a CPU). Per-concept recipes (the papers' settings
    # for nudity, a style, an object class) are data the world keeps (World.concept_recipe).
    world_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        for name, kind in field_types(type(self)).items():
            if kind is bool and isinstance(getattr(self, name), str):  # a CLI flag's word
                setattr(self, name, parse_bool(getattr(self, name), name))
        self.concept = self.concept.strip()
        if not self.concepts:
            raise UserError("the concept is empty; say what to erase, e.g. --concept circle")
        from .prompt_files import MAX_PROMPT_CHARS
        for name in ("concept", "anchor"):
            if len(getattr(self, name)) > MAX_PROMPT_CHARS:
                raise UserError(f"--{name} is {len(getattr(self, name))} characters, above the {MAX_PROMPT_CHARS} a "
                                "prompt may be; shorten it, or name a prompt file with --concept-prompts")
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive (got {self.lr})")
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1) (got {self.ema})")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"--lr-schedule must be constant or cosine (got '{self.lr_schedule}')")
        if self.checkpoint_every < 0:
            raise UserError("--checkpoint-every must be >= 0")
        if self.dtype == "float16":
            raise UserError("float16 training needs loss scaling, which erasure does not do; use --dtype bfloat16")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"unknown dtype '{self.dtype}'; choose auto, float32 or bfloat16")
        if self.attention not in ("auto", "xformers", "sdpa"):
            raise UserError(f"unknown attention backend '{self.attention}'; choose auto, xformers or sdpa")
        from .memory import OPTIMIZERS, checkpointing_word
        self.gradient_checkpointing = checkpointing_word(self.gradient_checkpointing)
        self.optimizer = str(self.optimizer).strip().lower()
        if self.optimizer not in ("auto", *OPTIMIZERS):
            raise UserError(f"unknown optimizer '{self.optimizer}'; choose auto, {', '.join(OPTIMIZERS)}")
        if self.save_dtype not in SAVE_DTYPES:
            raise UserError(f"unknown --save-dtype '{self.save_dtype}'; choose {', '.join(SAVE_DTYPES)}")
        from .targets import TARGETS, target_names
        if self.target and self.target not in TARGETS:
            raise UserError(f"unknown weight preset '{self.target}'; choose one of: {', '.join(target_names())}")

    def check_run(self) -> None:
        """A one-line UserError for what a run needs beyond valid settings (SFD on Stable
        Diffusion: its starting generator). Checked before any model loads (the trainer, the
        benchmark's settings check); a config that fails it is still a config (`erasure ls`)."""

    @property
    def concepts(self) -> list[str]:
        return [c.strip() for c in self.concept.split(",") if c.strip()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "EraseConfig":
        """Build the right subclass for data["method"]; unknown keys are an error, not ignored.
        Layers, lowest first: the class's defaults, the method name's presets, the base model's
        world's defaults, the world's recipe for the concept (its catalogue), then `data`."""
        from .registry import get_method
        from .worlds import world_for
        spec = get_method(data.get("method", ""))
        known = {f.name for f in dataclasses.fields(spec.config_cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown setting(s) for method {spec.name}: {', '.join(unknown)}")
        cls = spec.config_cls
        world = world_for(str(data.get("base_model", "minisd")).strip())
        layered = dict(spec.defaults) | world.method_defaults(cls, spec.name, str(data.get("concept", "")).strip())
        bad = sorted(set(layered) - known)
        if bad:
            raise UserError(f"the {world.title} recipe of {spec.name} names unknown setting(s) {', '.join(bad)}; "
                            "fix the world's catalogue")
        merged = {**layered, **data, "method": spec.name}
        _check_types(cls, merged)
        return cls(**merged)

    @staticmethod
    def from_json(text_or_path: str | Path) -> "EraseConfig":
        text = Path(text_or_path).read_text() if Path(str(text_or_path)).exists() else str(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"the config is not valid JSON ({e.msg} at line {e.lineno}); fix or regenerate it") from None
        return EraseConfig.from_dict(data)


def _check_types(cls, values: dict[str, Any]) -> None:
    """A setting given as the wrong kind of value (a YAML `steps: abc`, `lr: [1]`) is a one-line
    error naming it, not a TypeError deep in training: each value must be of its default's kind."""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.default is dataclasses.MISSING or f.default is None:
            continue
        value, default = values[f.name], f.default
        if isinstance(default, bool):  # a CLI word ("true", "off") is read by the setting itself
            ok = isinstance(value, (bool, str))
        elif isinstance(default, (int, float)):
            number = value
            if isinstance(value, str):  # a number written as text (a flag) is read by the setting itself
                try:
                    number = float(value)
                except ValueError:
                    number = None
            ok = isinstance(number, (int, float)) and not isinstance(number, bool)
            ok = ok and (isinstance(number, int) or not isinstance(default, int) or float(number).is_integer())
        elif isinstance(default, str):  # a word lever ("auto" | true | false) may also take a YAML boolean
            ok = isinstance(value, str) or (isinstance(value, bool) and f.metadata.get("takes_bool", False))
        else:
            continue
        if not ok:
            kind = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[type(default)]
            raise UserError(f"setting '{f.name}' must be {kind} (got {value!r}); fix it in the config or the flag")


@dataclass
class SelfDataConfig(EraseConfig):
    """Settings of the base model's self-generated training images (erasure/selfdata.py),
    shared by the methods that train on them (SalUn, DoCo)."""
    data_guidance: float = doc("CFG scale of the self-generated images (0 = the model's default: SD 7.5, MiniSD 5)",
                               default=0.0)
    data_steps: int = doc("sampling steps of the self-generated images (0 = the model's default: SD 50, MiniSD 25)",
                          default=0)
    data_seed: int = doc("seed of the first self-generated image (image i uses data_seed + i)", default=0)


def field_types(cls: type) -> dict[str, type]:
    """Resolved annotation per field (for generating CLI flags)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        out[f.name] = args[0] if args and typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)) else t
    return out
