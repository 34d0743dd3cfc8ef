"""Training one erasure for the benchmark, timed and measured: OUT/erasures/<method>/<concept>/
with train.json beside the erasure files (wall time, peak memory, parameters). Trained in a
.partial folder with checkpoints (a killed run resumes there), renamed when done; each
erasure's self-generated data and masks go to a private cache folder handed to the trainer, so
they are made cold, inside its time."""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..files import write_json
from .settings import BenchSettings, slug, train_config


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict]:
    """Peak memory of the block: CUDA's allocator peak on a GPU; on a CPU the process's peak
    resident set during the block (Linux: VmHWM, reset through /proc/self/clear_refs; elsewhere
    the lifetime peak, ru_maxrss) minus the resident set before it."""
    out: dict[str, Any] = {}

    def status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out.update(peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20,
                   memory_rule="torch.cuda.max_memory_allocated during training")
        return
    import gc
    gc.collect()
    try:  # hand freed heap memory back to the OS, so that "before" is what is live
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before, reset = status("VmRSS"), False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        pass
    yield out
    if reset and status("VmHWM") is not None:
        peak = status("VmHWM")
        rule = ("peak resident set of the process during training (Linux VmHWM, reset before) minus the resident "
                "set just before it: the memory the training added")
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rule = ("peak resident set of the process since it started (ru_maxrss; no reset on this OS) minus the "
                "resident set before training: an upper bound")
    out.update(peak_memory_mb=(peak - (before or 0)) / 2**20, process_peak_mb=peak / 2**20, memory_rule=rule)


def train_erasure(settings: BenchSettings, method: str, concept: str, log: Callable[[str], None] = print,
                  data_parallel: bool | None = None) -> Path:
    """Train (or reuse) one erasure: OUT/erasures/<method>/<concept>/ (see the module docstring).
    `data_parallel=False`: in this process alone, under a launcher too (the Trainer's setting)."""
    from ..erasure_files import is_erasure_dir, read_manifest
    from ..pipelines.loading import pick_device
    from ..registry import get_method
    from ..trainers.base import checkpoint_in

    final = Path(settings.out) / "erasures" / method / slug(concept)
    if (final / "train.json").exists() and is_erasure_dir(final):
        return final
    partial = final.with_name(final.name + ".partial")
    config = train_config(settings, method, concept)
    timing_file = partial / "timing.json"
    last = checkpoint_in(partial)  # checkpoint/, else checkpoint.prev (a run killed while committing)
    resume = last is not None
    prior = 0.0
    if resume:
        step = json.loads((last / "state.json").read_text())["step"]
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        prior = timing.get("seconds", 0.0) if timing.get("step") == step else 0.0
    else:
        shutil.rmtree(partial, ignore_errors=True)
    log(f"[bench] train {method} / {concept} ({config.steps} steps{', resuming' if resume else ''})")

    cache = final.with_name(final.name + ".cache")  # private: made cold, inside the timed call
    start = time.perf_counter()

    def progress(step: int, total: int, logs: dict) -> None:
        if config.checkpoint_every and step % config.checkpoint_every == 0:
            write_json(timing_file, {"seconds": prior + time.perf_counter() - start, "step": step})

    device = pick_device(config.device)
    try:
        with peak_memory(device) as memory:
            trainer = get_method(method).trainer_cls(config, cache_dir=cache, data_parallel=data_parallel)
            trainer.train(partial, resume=resume, callback=progress)
        seconds = prior + time.perf_counter() - start
        del trainer
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    manifest = read_manifest(partial)
    write_json(partial / "train.json", {
        "method": method, "concept": concept, "steps": config.steps, "train_seconds": seconds,
        "resumed": resume, "n_trained_parameters": manifest["n_changed_parameters"],
        "device": str(device), "torch_threads": torch.get_num_threads(), **memory,
        "rule": "wall time of the whole training call: model loading, self-generated data, masks and every step "
                "(a resumed run: the sum of its parts up to its last checkpoint)"})
    timing_file.unlink(missing_ok=True)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    log(f"[bench] trained {method} / {concept} in {seconds:.0f} s")
    return final
