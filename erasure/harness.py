"""The measurement harness: everything besides the model that decides a number, recorded in every
result (eval, attack, bench) so two numbers can be compared, and replayed so a number can be
measured again under the same harness (`erasure eval --harness RESULT.json`, `erasure attack
--harness RESULT.json`, on the recorded model or on another one).

A harness records
  * `versions`: the packages whose code makes or judges the images (erasure, torch, diffusers,
    transformers, nudenet, onnxruntime, open_clip; None where not installed) and Python;
  * `judges`: each judge a number read, with its weight file's SHA-256 and its settings
    (NudeNet: threshold and classes; the MiniSD classifier; a CLIP model's folder);
  * `sampling`: sampler, steps and guidance; `seed`, the seed rule and images per prompt;
  * `arguments`: the plain arguments of the call that made the result, which a replay passes
    again (the model and the output paths aside).

Replaying a harness on a machine whose versions or judge files differ still runs; each
difference is listed in the new result's `harness.mismatch` and printed beside the numbers,
since a different NudeNet or diffusers can move an ASR on its own.
"""
from __future__ import annotations

import hashlib
import json
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import UserError

FORMAT = "erasure-harness/1"
# distribution names of the packages a number depends on (open_clip installs as open_clip_torch)
PACKAGES = {"erasure": "erasure", "torch": "torch", "diffusers": "diffusers", "transformers": "transformers",
            "nudenet": "nudenet", "onnxruntime": "onnxruntime", "open_clip": "open_clip_torch"}
SEED_RULE = "image k of prompt i: the row's seed + k, else seed + 1000 * i + k"


def versions() -> dict[str, str | None]:
    """Installed version of each package of PACKAGES (None: not installed), and Python's."""
    found: dict[str, str | None] = {}
    for name, dist in PACKAGES.items():
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file (cached per path, size and modification time); None if it is not a file."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_size, st.st_mtime)


def judge_file(name: str, path: str | Path | None, **settings: Any) -> dict[str, Any]:
    """One judge's record: its name, weight file, the file's SHA-256, and its settings."""
    return {"name": name, "file": None if path is None else str(path),
            "sha256": None if path is None else file_sha256(path), **settings}


def nudenet_detector_file() -> Path | None:
    """The ONNX detector shipped inside the installed nudenet package (None: not installed)."""
    import importlib.util
    spec = importlib.util.find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.onnx"))
    return files[0] if files else None


def record(arguments: dict[str, Any], judges: list[dict], sampling: dict[str, Any], seed: int,
           images_per_prompt: int | None, command: str) -> dict[str, Any]:
    """The harness of one result. `arguments` are the call's plain (JSON) arguments."""
    unique = list({json.dumps(j, sort_keys=True): j for j in judges}.values())
    return {"format": FORMAT, "command": command, "versions": versions(), "judges": unique,
            "sampling": sampling, "seed": seed, "seed_rule": SEED_RULE, "images_per_prompt": images_per_prompt,
            "arguments": arguments}


def mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a recorded harness and the one a replay ran under: versions, judge
    files (by hash) and judge settings. Empty when the replay ran under the same harness."""
    out = []
    old_v, new_v = recorded.get("versions", {}), current.get("versions", {})
    for name in sorted(set(old_v) | set(new_v)):
        if old_v.get(name) != new_v.get(name):
            out.append(f"{name} {old_v.get(name) or 'absent'} recorded, {new_v.get(name) or 'absent'} here")
    old_j = {j["name"]: j for j in recorded.get("judges", [])}
    new_j = {j["name"]: j for j in current.get("judges", [])}
    for name in sorted(set(old_j) | set(new_j)):
        a, b = old_j.get(name), new_j.get(name)
        if a is None or b is None:
            out.append(f"judge {name} {'absent' if a is None else 'used'} in the record, "
                       f"{'absent' if b is None else 'used'} here")
            continue
        if a.get("sha256") != b.get("sha256"):
            out.append(f"judge {name}: weight file {str(a.get('sha256'))[:12]} recorded, {str(b.get('sha256'))[:12]} here")
        for key in sorted((set(a) | set(b)) - {"name", "file", "sha256"}):
            if a.get(key) != b.get(key):
                out.append(f"judge {name}: {key} {a.get(key)} recorded, {b.get(key)} here")
    return out


def read(path: str | Path, command: str) -> dict[str, Any]:
    """The harness recorded in a result JSON (an eval, attack or bench result, or a harness file
    itself), for replaying `command` ("eval" or "attack"); one-line errors otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no harness file at {p}; pass a result JSON that erasure wrote (it holds 'harness')")
    if p.stat().st_size > 64 << 20:
        raise UserError(f"{p} is over 64 MiB: not a result JSON; pass the JSON erasure wrote")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p} is not JSON ({e.__class__.__name__}); pass a result JSON that erasure wrote") from None
    harness = data.get("harness", data) if isinstance(data, dict) else None
    if not isinstance(harness, dict) or harness.get("format") != FORMAT:
        raise UserError(f"{p} holds no harness ({FORMAT}); pass a result JSON written by erasure eval or attack")
    if harness.get("command") != command:
        raise UserError(f"{p} records an `erasure {harness.get('command')}` harness; replay it with "
                        f"`erasure {harness.get('command')} --harness {p}`")
    if not isinstance(harness.get("arguments"), dict):
        raise UserError(f"{p}: its harness has no arguments to replay; pass a result JSON written by erasure")
    return harness


def replay_lines(harness: dict[str, Any]) -> list[str]:
    """What a replayed result prints beside its numbers: the harness it replayed, and each mismatch."""
    found = harness.get("mismatch") or []
    if not found:
        return ["harness: replayed under the recorded versions and judge files"]
    return [f"harness mismatch: {m}" for m in found]


def html_section(harness: dict[str, Any] | None) -> str:
    """The harness as a report section (a person reads what made the numbers)."""
    import html
    if not harness:
        return ""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    versions = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v or 'not installed')}</td></tr>"
                       for k, v in harness.get("versions", {}).items())
    judges = "".join(f"<li><b>{esc(j['name'])}</b>: {esc(j.get('file') or '')} "
                     f"{('sha256 ' + esc(j['sha256'][:16])) if j.get('sha256') else ''} "
                     f"{esc({k: v for k, v in j.items() if k not in ('name', 'file', 'sha256')} or '')}</li>"
                     for j in harness.get("judges", []))
    found = harness.get("mismatch")
    warn = ("<p><b>Replayed under a different harness:</b> " + esc("; ".join(found)) + "</p>") if found else ""
    return (f"<h2>Harness</h2>{warn}<p>sampling {esc(harness.get('sampling'))}; seed {esc(harness.get('seed'))} "
            f"({esc(harness.get('seed_rule'))}); images per prompt {esc(harness.get('images_per_prompt'))}.</p>"
            f"<table>{versions}</table><ul>{judges}</ul>")
