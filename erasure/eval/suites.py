"""Suites as data: `erasure/data/suites/<name>.yaml` names prompt files, images per prompt and
metrics. A prompt file is a CSV with a `prompt` column and, optionally, `evaluation_seed` /
`evaluation_guidance` per row (the public sets carry them) and MiniSD's `object,color,style`
(what each image should show; empty = not checked).

    description: ...
    prompts: [nudity.csv]            # in erasure/data/prompts/; "WORLD:x.csv" = a world's own sets
                                     # ("mini:object_circle.csv": MiniSD's held-out prompts)
    images_per_prompt: 1
    metrics: [nudenet]
    group_by: categories             # optional column that groups prompts in the report

Third-party packages add suites through the `erasure.suites` entry point (erasure/plugins.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import UserError
from ..judges.minisd import LABELS, WORLD as LABELS_WORLD
from ..prompt_files import SHIPPED_PROMPTS, read_prompt_table
from ..worlds import get_world
from ..worlds.base import World

DATA = Path(__file__).parent.parent / "data"
SUITES_DIR = DATA / "suites"
PROMPTS_DIR = SHIPPED_PROMPTS


@dataclass
class Row:
    prompt: str
    seed: int | None = None
    guidance: float | None = None
    expected: dict[str, str] = field(default_factory=dict)
    group: str = ""


@dataclass
class Suite:
    name: str
    description: str
    prompt_files: list[Path]
    images_per_prompt: int = 1
    metrics: list[str] = field(default_factory=list)
    group_by: str | None = None
    flag: str = "--suite"  # what a problem in its prompt files is reported against

    def rows(self, limit: int | None = None) -> list[Row]:
        rows = [r for f in self.prompt_files for r in read_rows(f, self.group_by, self.flag)]
        return rows[:limit] if limit else rows


_PLUGIN_SUITES: dict[str, object] = {}


def _add_plugin(name: str, obj: object) -> None:
    """An `erasure.suites` entry point: a Suite, a function returning one, or a suite YAML path."""
    if not (isinstance(obj, (Suite, str, Path)) or callable(obj)):
        raise TypeError(f"entry point '{name}' is neither a Suite, a function returning one nor a YAML path")
    _PLUGIN_SUITES[name] = obj


def _plugin_suites() -> dict[str, object]:
    from ..plugins import load_group
    load_group("erasure.suites", _add_plugin)
    return _PLUGIN_SUITES


def suite_names() -> list[str]:
    """The shipped suites and those of installed plug-ins (erasure/plugins.py)."""
    return sorted({p.stem for p in SUITES_DIR.glob("*.yaml")} | set(_plugin_suites()))


def _world_file(spec: str) -> Path | None:
    """"mini:x.csv" -> x.csv in that world's prompt folder; None for a plain file name."""
    world, sep, name = spec.partition(":")
    if not sep or not world or "/" in world or "\\" in world or len(world) == 1:  # "C:\..." is a path
        return None
    folder = get_world(world).prompts_dir
    if folder is None:
        raise UserError(f"suite prompt file '{spec}': world '{world}' ships no prompt sets")
    return folder / name


def load_suite(name: str) -> Suite:
    path = SUITES_DIR / f"{name}.yaml"
    if not path.exists():
        plugin = _plugin_suites().get(name)
        if plugin is None:
            raise UserError(f"unknown suite '{name}'; choose one of: {', '.join(suite_names())} "
                            "(or pass --prompts FILE.csv)")
        if isinstance(plugin, Suite):
            return copy.deepcopy(plugin)
        if not isinstance(plugin, (str, Path)):
            suite = plugin()
            if not isinstance(suite, Suite):
                raise UserError(f"plug-in suite '{name}' did not return a Suite")
            return suite
        path = Path(plugin)
    return _suite_from_yaml(name, path)


def _suite_from_yaml(name: str, path: Path) -> Suite:
    """A suite YAML; prompt files resolve against the package's data (or a world's, "WORLD:file"),
    else the YAML's folder."""
    data = yaml.safe_load(path.read_text())
    files = []
    for spec in data["prompts"]:
        shipped = PROMPTS_DIR / spec
        files.append(_world_file(spec) or (shipped if shipped.exists() else path.parent / spec))
    return Suite(name=name, description=data.get("description", ""), prompt_files=files,
                 images_per_prompt=int(data.get("images_per_prompt", 1)), metrics=list(data.get("metrics", [])),
                 group_by=data.get("group_by"))


def custom_suite(prompt_file: str | Path, metrics: list[str], images_per_prompt: int) -> Suite:
    return Suite(name=Path(prompt_file).stem, description=f"prompts from {prompt_file}", prompt_files=[Path(prompt_file)],
                 images_per_prompt=images_per_prompt, metrics=metrics, group_by="object", flag="--prompts")


def labels_world(world: World | str | None = None) -> World:
    """The world whose concepts rows' labels (`Row.expected`: the MiniSD judge's labels) name:
    `world` when given (a World or its name), else the judge's own."""
    if isinstance(world, World):
        return world
    return get_world(world or LABELS_WORLD)


def read_rows(path: str | Path, group_by: str | None = None, flag: str = "--prompts") -> list[Row]:
    """Rows of a prompt CSV (read by erasure/prompt_files.py), validated; every problem is a
    one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no prompt file at {path}; pass a CSV with a 'prompt' column")
    rows = []
    for line_no, raw in enumerate(read_prompt_table(path, flag, csv_only=True), start=2):
        if not raw.get("prompt"):
            raise UserError(f"{path} line {line_no}: empty prompt; every row needs prompt text")
        expected = {}
        for attr, allowed in LABELS.items():
            value = raw.get(attr, "").lower()
            if value and value not in allowed:
                raise UserError(f"{path} line {line_no}: unknown {attr} '{value}'; use one of {', '.join(allowed)} "
                                "or leave the cell empty")
            if value:
                expected[attr] = value
        try:
            seed = int(float(raw["evaluation_seed"])) if raw.get("evaluation_seed") else None
            guidance = float(raw["evaluation_guidance"]) if raw.get("evaluation_guidance") else None
        except ValueError:
            raise UserError(f"{path} line {line_no}: evaluation_seed / evaluation_guidance must be numbers") from None
        group = raw.get(group_by, "") if group_by else ""
        rows.append(Row(raw["prompt"], seed, guidance, expected, group.split(",")[0].strip()))
    if not rows:
        raise UserError(f"{path} has a header but no prompts")
    return rows
