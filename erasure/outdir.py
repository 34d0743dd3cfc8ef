"""The output folder of a run, checked before any work and held while the run writes it.

`check_out` refuses an `--out` that is a file, that cannot be written (read-only, a full disk, a
path under /proc) or that holds files this package did not write, so a run never trains for an
hour to fail at the end or deletes someone else's `checkpoint/`. `hold_out` takes an exclusive
lock (`.erasure.lock`, removed when the run ends; flock: released by the kernel when the process dies, so a killed run
leaves no stale lock) so that a second run into the same folder gets a one-line error instead of
both reporting success with one result lost.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".erasure.lock"
# what a training run writes into its --out (the erasure, its grid, its checkpoint and their temp files;
# a composed run's parts/, erasure/trainers/composed.py PARTS_DIR, each part a run folder of its own)
_RUN_FILES = {"erasure_config.json", "erasure_model.safetensors", "comparison.png", "checkpoint", "parts", LOCK_NAME}


def _ours(entry: Path) -> bool:
    name = entry.name
    return name in _RUN_FILES or name.startswith(("checkpoint.", ".erasure_", ".comparison.png.")) or name.endswith(".tmp")


def check_out(out: str | Path, what: str = "--out") -> Path:
    """`out` as a folder a run may write (not created here): an error if it holds files that are
    not a run's (a `checkpoint/` that is not ours included), and check_writable's errors (a file,
    not writable)."""
    out = Path(out)
    if out.is_dir():
        others = sorted(e.name for e in out.iterdir() if not _ours(e))
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise UserError(f"{what} {out} holds files a run did not write ({shown}); choose a new or empty folder")
        ckpt = out / "checkpoint"
        # a checkpoint/ without state.json is ours when a run died while committing a new one:
        # checkpoint.prev (the one before) or a checkpoint.new-* scratch folder sits beside it,
        # and --resume falls back on the previous checkpoint
        if (ckpt.is_dir() and not (ckpt / "state.json").exists() and any(ckpt.iterdir())
                and not any(e.name == "checkpoint.prev" or e.name.startswith("checkpoint.new-") for e in out.iterdir())):
            raise UserError(f"{what} {out} holds a checkpoint/ folder that is not a training checkpoint; choose another folder")
    return check_writable(out, what)


def check_writable(out: str | Path, what: str = "--out") -> Path:
    """`out` as a folder that can be written (not created here): an error if it is a file, or if
    it (or, when it does not exist yet, the nearest folder above it) takes no 4 kB file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out} is a file; choose a folder")
    # probe the folder, or the nearest one above it that exists (nothing is created for a run that
    # may still fail on its inputs)
    probe_dir = out
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(f"{probe_dir} is a file")
        fd, probe = tempfile.mkstemp(prefix=".erasure_probe.", dir=probe_dir)
        os.write(fd, b"\0" * 4096)  # a full disk fails here, not after the training
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {out} ({e.strerror or e}); choose a writable folder") from None
    return out


@contextlib.contextmanager
def hold_out(out: str | Path) -> Iterator[Path]:
    """Hold `out` for this process while the block runs; another holder is a one-line error."""
    import fcntl

    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{out} is being written by another run ({holder}); wait for it to end or choose "
                            "another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield out
        finally:
            # removed while still held, so the finished folder holds only the run's results (a
            # later run makes a fresh lock file; contenders never wait, they fail at once)
            with contextlib.suppress(OSError):
                (out / LOCK_NAME).unlink()
            if created:  # a run that failed before writing anything leaves no empty folder
                with contextlib.suppress(OSError):
                    out.rmdir()
    finally:
        handle.close()
