"""Erasure files: `erasure_config.json` (the manifest) + `erasure_model.safetensors` (only the
tensors the method changed, keyed "unet.<name>" / "text_encoder.<name>").

The manifest names the method, the full config, the base model (as given, and the folder it
resolved to), a hash of the base, the package version and the changed tensors. The weights file
is written first and the manifest last, each atomically: a folder without a manifest is not an
erasure.

`base_hash` is the sha256 of the base model's own values of the changed tensors (float32,
sorted by name). It is what an erasure depends on (a delta applied to a different base is wrong
exactly when these differ) and costs milliseconds, where hashing a whole SD checkpoint takes
seconds on every load.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .version import __version__
from .errors import UserError
from .files import load_tensors, save_tensors, write_json

CONFIG_NAME = "erasure_config.json"
WEIGHTS_NAME = "erasure_model.safetensors"
FORMAT = "erasure/1"
COMPONENTS = ("unet", "text_encoder")


def is_erasure_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).exists() or (Path(path) / WEIGHTS_NAME).exists()


def base_tensors(pipe, names: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for key in names:
        component, name = key.split(".", 1)
        state = getattr(pipe, component).state_dict()
        if name in state:
            out[key] = state[name]
    return out


def hash_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_erasure(out_dir: str | Path, config, tensors: dict[str, torch.Tensor], base_hash: str,
                 base_path: str | Path, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(out / WEIGHTS_NAME, {k: v.detach().float() for k, v in tensors.items()},
                 metadata={"format": FORMAT, "method": config.method})
    manifest = {
        "format": FORMAT,
        "erasure_version": __version__,
        "method": config.method,
        "concept": config.concept,
        "base_model": config.base_model,
        "base_model_path": str(Path(base_path).resolve()),
        "base_hash": base_hash,
        "changed_tensors": sorted(tensors),
        "n_changed_parameters": int(sum(v.numel() for v in tensors.values())),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
        **(extra or {}),
    }
    write_json(out / CONFIG_NAME, manifest)
    return out


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not cfg.exists():
        raise UserError(f"{path} has no {CONFIG_NAME}; it is not a complete erasure folder (re-run erasure train)")
    try:
        manifest = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg} is corrupt ({e.msg} at line {e.lineno}); re-run erasure train to rewrite it") from None
    missing = [k for k in ("format", "method", "base_model", "changed_tensors", "config") if k not in manifest]
    if missing or not str(manifest.get("format", "")).startswith("erasure/"):
        raise UserError(f"{cfg} is not an erasure manifest (missing {', '.join(missing) or 'format'}); re-run erasure train")
    if not (path / WEIGHTS_NAME).exists():
        raise UserError(f"{path} has a manifest but no {WEIGHTS_NAME}; the erasure is incomplete (re-run erasure train)")
    return manifest


def apply_erasure(pipe, path: str | Path, manifest: dict | None = None) -> dict:
    """Load an erasure's tensors into `pipe` in place. Every key must exist in the base with the
    same shape, else a UserError lists the mismatches; a different base hash is a warning."""
    import warnings

    manifest = manifest or read_manifest(path)
    tensors = load_tensors(Path(path) / WEIGHTS_NAME)
    if sorted(tensors) != sorted(manifest["changed_tensors"]):
        raise UserError(f"{path}: the weights file and the manifest list different tensors; re-run erasure train")
    problems = []
    for key, value in tensors.items():
        component, name = key.split(".", 1)
        module = getattr(pipe, component, None) if component in COMPONENTS else None
        state = module.state_dict() if module is not None else {}
        if name not in state:
            problems.append(f"{key} (not in base)")
        elif state[name].shape != value.shape:
            problems.append(f"{key} (base {tuple(state[name].shape)} vs erasure {tuple(value.shape)})")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise UserError(f"this erasure does not fit the base model ({len(problems)} tensor(s): {shown}); "
                        f"load it onto the base it was trained on ({manifest['base_model']})")
    base_hash = hash_tensors(base_tensors(pipe, list(tensors)))
    if manifest.get("base_hash") and base_hash != manifest["base_hash"]:
        warnings.warn(f"the base model differs from the one this erasure was trained on ({manifest['base_model']}): "
                      "the changed tensors' base values do not match; results may differ", stacklevel=2)
    with torch.no_grad():
        for key, value in tensors.items():
            component, name = key.split(".", 1)
            module = getattr(pipe, component)
            target = dict(module.named_parameters()).get(name)
            if target is None:
                target = module.state_dict()[name]
            target.copy_(value.to(target.device, target.dtype))
    return manifest
