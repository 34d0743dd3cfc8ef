"""Erasure files: `erasure_config.json` (the manifest) + `erasure_model.safetensors` (only the
tensors the method changed, keyed "unet.<name>" / "text_encoder.<name>").

The manifest names the method, the full config, the base model (as given, and the folder it
resolved to), a hash of the base, the package version and the changed tensors. The weights file
is written first and the manifest last, each atomically: a folder without a manifest is not an
erasure.

Tensors are stored in the dtype the base model's own files hold the same weight in
(`stored_dtypes`: an fp16 Stable Diffusion, or MiniSD, gives fp16 erasures; an fp32 one, fp32),
unless the config's `save_dtype` (or the caller) asks for float32, float16 or bfloat16: an
ESD-x delta of SD 1.4 is 176 MB in float32 and 88 MB in float16. Rounding a trained weight to
its base's precision loses nothing the base had; a weight a method left unchanged (SalUn's
unmasked ones) stays bit-equal to the base. The manifest records each stored tensor's
dtype (`tensor_dtypes`; `stored_dtype`: the one dtype, or "mixed"); loading checks the file
against it as it checks shapes, and casts each tensor to the pipeline's dtype (a float16 erasure
applied to a float32 pipeline is float16's rounding of the float32 one).

`base_hash` is the sha256 of the base model's own values of the changed tensors (float32,
sorted by name). It is what an erasure depends on (a delta applied to a different base is wrong
exactly when these differ) and costs milliseconds, where hashing a whole SD checkpoint takes
seconds on every load.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path

import torch

from .errors import UserError
from .files import load_tensors, save_tensors, write_json
from .version import __version__

CONFIG_NAME = "erasure_config.json"
WEIGHTS_NAME = "erasure_model.safetensors"
FORMAT = "erasure/1"
COMPONENTS = ("unet", "text_encoder")
MAX_MANIFEST_BYTES = 16 * 10**6  # an SD 1.x manifest lists ~700 tensors in ~100 kB
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def storage_dtypes(tensors: dict[str, torch.Tensor], config=None, dtype: torch.dtype | str | None = None,
                   base_dtypes: dict[str, torch.dtype] | None = None) -> dict[str, torch.dtype]:
    """The dtype each tensor is stored in: `dtype` when given (a torch dtype or its name), else
    the config's `save_dtype` ("float32", "float16", "bfloat16"), else ("base", the default) the base model's dtype of that
    weight: `base_dtypes[key]` from the caller (the pipeline's loaded weights), else the dtype of
    the tensor itself."""
    if dtype is None or isinstance(dtype, str):
        name = dtype or getattr(config, "save_dtype", "base") or "base"
        if name != "base" and name not in SAVE_DTYPES:
            raise UserError(f"unknown save dtype '{name}'; choose base, {', '.join(SAVE_DTYPES)}")
        dtype = SAVE_DTYPES.get(name)
    if dtype is not None and not dtype.is_floating_point:
        raise UserError(f"an erasure stores floating-point weights; save in one of {', '.join(SAVE_DTYPES)} (got {dtype})")
    base_dtypes = base_dtypes or {}
    return {k: dtype or base_dtypes.get(k, v.dtype) for k, v in tensors.items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def stored_dtypes(base_path: str | Path, keys: list[str]) -> dict[str, torch.dtype]:
    """The dtype each of `keys` ("unet.<name>", "text_encoder.<name>") has in the base model's
    own safetensors files (read from their headers, no tensor is loaded): what "base" means
    for `save_dtype`. The default file (diffusion_pytorch_model.safetensors, model.safetensors)
    wins over a variant (*.fp16.safetensors); keys with no file (a pipeline built in memory)
    are left out."""
    return {key: _SAFETENSORS_DTYPES.get(handle.get_slice(name).get_dtype(), torch.float32)
            for key, handle, name in _base_entries(base_path, keys)}


def component_files(base_path: str | Path, component: str) -> list[Path]:
    """The safetensors files of one component folder of a diffusers model, the default file
    (diffusion_pytorch_model.safetensors, model.safetensors) before a variant
    (*.fp16.safetensors)."""
    return safetensors_files(Path(base_path) / component)


def safetensors_files(folder: str | Path) -> list[Path]:
    """A model folder's safetensors files, the default file before a variant (*.fp16.safetensors);
    none for a folder that does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.safetensors"), key=lambda f: (f.name.count(".") > 1, f.name))


_TEXT_MODEL = "text_encoder.text_model."


def canonical_key(key: str) -> str:
    """A key's name independent of the transformers version: CLIPTextModel's tensors are
    "text_model.<name>" in transformers 4 (and in Stable Diffusion's own files) and "<name>" in 5."""
    return "text_encoder." + key.removeprefix(_TEXT_MODEL) if key.startswith(_TEXT_MODEL) else key


@functools.lru_cache(maxsize=1)
def _text_model_prefixed() -> bool:
    from transformers import CLIPTextConfig, CLIPTextModel
    tiny = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_attention_heads=1,
                                        num_hidden_layers=1, vocab_size=8, max_position_embeddings=4))
    return next(iter(tiny.state_dict())).startswith("text_model.")


def loaded_key(key: str) -> str:
    """`key` as the installed transformers' loaded text encoder names it (UNet keys unchanged), so
    files written under either transformers version apply under the other."""
    key = canonical_key(key)
    if key.startswith("text_encoder.") and _text_model_prefixed():
        return "text_encoder.text_model." + key.removeprefix("text_encoder.")
    return key


def _base_entries(base_path: str | Path, keys: list[str]):
    """(key, open safetensors handle, name) for each of `keys` ("<component>.<name>") found in the
    base's own files (matched by `canonical_key`), a name found in several files from the first
    (`component_files`' order)."""
    from safetensors import safe_open

    wanted = {canonical_key(k): k for k in keys}
    seen = set()
    for component in sorted({k.split(".", 1)[0] for k in keys}):
        for file in component_files(base_path, component):
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    key = wanted.get(canonical_key(f"{component}.{name}"))
                    if key is not None and key not in seen:
                        seen.add(key)
                        yield key, handle, name


def read_base_tensors(base_path: str | Path, keys: list[str]) -> dict[str, torch.Tensor]:
    """The base model's tensors `keys` ("<component>.<name>"), read from its own safetensors
    files (only they are read; no model is built)."""
    return {key: handle.get_tensor(name) for key, handle, name in _base_entries(base_path, keys)}


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
    for key in sorted(tensors, key=canonical_key):  # the same hash under either transformers version
        h.update(canonical_key(key).encode())
        h.update(tensors[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_erasure(out_dir: str | Path, config, tensors: dict[str, torch.Tensor], base_hash: str,
                 base_path: str | Path, extra: dict | None = None, dtype: torch.dtype | str | None = None,
                 base_dtypes: dict[str, torch.dtype] | None = None) -> Path:
    """Write the erasure folder: the changed `tensors` (stored as `storage_dtypes` says: `dtype`,
    else the config's `save_dtype`, else the base's dtype of each weight) and the manifest."""
    bad = not_finite(tensors)
    if bad:
        raise UserError(f"refusing to write an erasure whose tensors hold NaN/inf values ({len(bad)} tensor(s), e.g. "
                        f"{bad[0]}); the training diverged: lower --lr or use --dtype float32")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = storage_dtypes(tensors, config, dtype, base_dtypes)
    save_tensors(out / WEIGHTS_NAME, {k: v.detach().to(dtypes[k]) for k, v in tensors.items()},
                 metadata={"format": FORMAT, "method": config.method})
    names = {k: dtype_name(d) for k, d in sorted(dtypes.items())}
    manifest = {
        "format": FORMAT,
        "erasure_version": __version__,
        "method": config.method,
        "concept": config.concept,
        "base_model": recorded_base(config.base_model, base_path, out),
        "base_model_path": str(Path(base_path).resolve()),
        "base_hash": base_hash,
        "changed_tensors": sorted(tensors),
        "n_changed_parameters": int(sum(v.numel() for v in tensors.values())),
        "stored_dtype": next(iter(set(names.values()))) if len(set(names.values())) == 1 else "mixed",
        "tensor_dtypes": names,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": config.to_dict(),
        **(extra or {}),
    }
    write_json(out / CONFIG_NAME, manifest)
    return out


def recorded_base(base_model: str, base_path: str | Path, out_dir: str | Path) -> str:
    """How a manifest names its base: a local folder relative to the erasure folder (the pair
    moves together, and a shared erasure never names a folder relative to whoever loads it), a
    shipped model or a hub id as given."""
    import os
    given = Path(str(base_model)).expanduser()
    if not given.exists():
        return str(base_model)
    return os.path.relpath(Path(base_path).resolve(), Path(out_dir).resolve())


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not cfg.exists():
        raise UserError(f"{path} has no {CONFIG_NAME}; it is not a complete erasure folder (re-run erasure train)")
    if cfg.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{cfg} is {cfg.stat().st_size / 1e6:.0f} MB, not a manifest (at most {MAX_MANIFEST_BYTES // 10**6} MB); "
                        "re-run erasure train to rewrite it")
    try:
        manifest = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg} is corrupt ({e.msg} at line {e.lineno}); re-run erasure train to rewrite it") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise UserError(f"{cfg} is not JSON text; re-run erasure train to rewrite it") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{cfg} is not an erasure manifest (a JSON {type(manifest).__name__}, not an object); "
                        "re-run erasure train")
    missing = [k for k in ("format", "method", "base_model", "changed_tensors", "config") if k not in manifest]
    if missing or not str(manifest.get("format", "")).startswith("erasure/"):
        raise UserError(f"{cfg} is not an erasure manifest (missing {', '.join(missing) or 'format'}); re-run erasure train")
    if not (path / WEIGHTS_NAME).exists():
        raise UserError(f"{path} has a manifest but no {WEIGHTS_NAME}; the erasure is incomplete (re-run erasure train)")
    return manifest


def not_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors that hold a NaN or an infinity, sorted."""
    return sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))


def erasure_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The changed tensors of the erasure folder `path`, as stored; a UserError if the file is
    damaged or a tensor holds NaN/inf (it would draw black or noise images, judged as an erasure's)."""
    tensors = load_tensors(Path(path) / WEIGHTS_NAME)
    bad = not_finite(tensors)
    if bad:
        raise UserError(f"{path}: {len(bad)} of the erasure's tensors hold NaN/inf values (e.g. {bad[0]}); it is "
                        "damaged or from a diverged run: re-run erasure train")
    return tensors


def apply_erasure(pipe, path: str | Path, manifest: dict | None = None) -> dict:
    """Load an erasure's tensors into `pipe` in place, each cast to the pipeline's dtype. Every key
    must exist in the base with the same shape, else a UserError lists the mismatches; every
    tensor must be floating point and of the dtype the manifest records in `tensor_dtypes` (older
    manifests record none; their files are float32), else a UserError; a different base hash is
    a warning (checked on a float32 pipeline: the hash is of float32 values)."""
    import warnings

    manifest = manifest or read_manifest(path)
    tensors = erasure_tensors(path)
    if sorted(tensors) != sorted(manifest["changed_tensors"]):
        raise UserError(f"{path}: the weights file and the manifest list different tensors; re-run erasure train")
    recorded = {loaded_key(k): v for k, v in (manifest.get("tensor_dtypes") or {}).items()}
    tensors = {loaded_key(k): v for k, v in tensors.items()}
    wrong = []
    for key, value in sorted(tensors.items()):
        stored, said = dtype_name(value.dtype), recorded.get(key)
        if said is not None and said != stored:
            wrong.append(f"{key} ({stored}, manifest {said})")
        elif not value.is_floating_point():
            wrong.append(f"{key} ({stored})")
    if wrong:
        shown = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise UserError(f"{path}: the weights file's dtypes do not match its manifest or are not floating point "
                        f"({len(wrong)} tensor(s): {shown}); re-run erasure train to rewrite the erasure")
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
    base = base_tensors(pipe, list(tensors))
    # the hash is of the base's float32 values: a pipeline loaded in a lower precision (the
    # attack's bfloat16 on CUDA) holds them rounded, so its hash cannot be compared
    comparable = all(v.dtype == torch.float32 for v in base.values())
    if manifest.get("base_hash") and comparable and hash_tensors(base) != manifest["base_hash"]:
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
