"""Small, shared file helpers: atomic writes, safetensors-only state files.

Everything the package writes goes through `atomic_path` so a crash never leaves a half-written
file under its final name. Checkpoints hold tensors in safetensors and the rest in JSON:
no pickles anywhere.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file 0600; the result gets the mode any new file would (the umask's)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_home() -> Path:
    """Where erasure keeps what it can recompute: $ERASURE_CACHE, else $XDG_CACHE_HOME/erasure
    (~/.cache/erasure)."""
    if os.environ.get("ERASURE_CACHE"):
        return Path(os.environ["ERASURE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "erasure"


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _canonical_header(tmp)


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header in place with its keys sorted: safetensors writes the metadata
    in hash-map order, so identical runs would give files whose bytes (and hash) differ. The
    header keeps its length (the same JSON reordered, padded with spaces as safetensors pads it),
    so the tensor data does not move."""
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
        if len(text) > length:  # never: the same content, reordered
            return
        f.seek(8)
        f.write(text + b" " * (length - len(text)))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """The hex sha256 of a file, read in 4 MB pieces (a full-size checkpoint is ~14 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file's bytes, or a folder's names, to the disk: a rename that publishes a folder is
    only as durable as what it points at. Best effort: a filesystem or OS that cannot fsync a
    folder (Windows) is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{path} is a pickle checkpoint, which erasure never loads; convert it to .safetensors "
                         "(e.g. safetensors.torch.save_file(torch.load(p, weights_only=True), 'model.safetensors'))")
    if not path.exists():
        raise FileNotFoundError(f"no weights file at {path}")
    from safetensors import SafetensorError

    from .errors import UserError
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:  # truncated, corrupt, or not safetensors at all
        raise UserError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]}); it is damaged: "
                        "re-run what wrote it (erasure train) or copy it again") from None


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def python_rng_state(rng) -> dict:
    """A `random.Random`'s state as JSON-able data."""
    version, internal, gauss = rng.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_python_rng_state(rng, data) -> None:
    """Inverse of `python_rng_state`; also reads the repr() string older MiniSD checkpoints wrote."""
    if isinstance(data, str):
        version, internal, gauss = ast.literal_eval(data)
    else:
        version, internal, gauss = data["version"], data["internal"], data["gauss"]
    rng.setstate((version, tuple(internal), gauss))


def human_size(n_bytes: int) -> str:
    """A byte count as a person reads it: '13.8 GB', '640 kB'."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"
