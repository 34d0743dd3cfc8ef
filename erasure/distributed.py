"""Several processes: `accelerate launch -m erasure ...` (or `torchrun -m erasure ...`).

One process per device; each knows its rank among `processes`. The work of a long command is cut
into units that do not depend on how many processes run (a batch of images, a batch of attacked
prompts, a (method, concept) pair of the benchmark) and dealt round-robin, so every unit is
computed exactly as a single process computes it; results go through files (the image cache, the
attack's per-process parts, the benchmark's pieces), which is also what a killed run resumes from;
the main process alone writes the JSON and HTML a person reads. Training is data parallel: every
process draws the global batch (per-process batch x processes) from the same generator and keeps
its own rows (`shard`), and the gradients are averaged across processes before each step.

accelerate's `PartialState` sets up the process group: NCCL on CUDA, gloo on CPU (where it is asked
for with cpu=True, which this module does when no CUDA device is present). Without a launcher
every function here is the single-process identity, and nothing is initialised.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")


def launched() -> bool:
    """Whether a launcher started several processes (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def state():
    """accelerate's PartialState (the process group, made once), or None without a launcher."""
    if not launched():
        return None
    from accelerate import PartialState

    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=use_cpu)


def processes() -> int:
    s = state()
    return s.num_processes if s is not None else 1


def rank() -> int:
    s = state()
    return s.process_index if s is not None else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device | None:
    """This process's device under a launcher (cuda:LOCAL_RANK, or cpu); None without one."""
    s = state()
    return s.device if s is not None else None


def wait() -> None:
    """A barrier: every process waits until all reach it."""
    s = state()
    if s is not None:
        s.wait_for_everyone()


def deal(units: Sequence[T]) -> list[T]:
    """This process's units, dealt round-robin (unit i goes to process i mod processes)."""
    return list(units[rank()::processes()])


@contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it fills caches on disk), then the others (they read them)."""
    s = state()
    if s is None:
        yield
        return
    with s.main_process_first():
        yield


def mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average each tensor in place across processes (gradients: the global batch's mean)."""
    n = processes()
    if n == 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t.div_(n)


def mean_value(x: float) -> float:
    """A number's mean across processes (a logged loss)."""
    if processes() == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64, device=_comm_device())
    mean_([t])
    return float(t.item())


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every process's rows of `t` (the same shape on each), concatenated in rank order: the global
    batch again, from the shards `Trainer.shard` cut (no gradient flows back through it)."""
    if processes() == 1:
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(processes())]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


def _comm_device() -> torch.device:
    s = state()
    return s.device if s is not None and s.device.type == "cuda" else torch.device("cpu")


def gather_json(obj) -> list:
    """Every process's `obj` (anything JSON can hold), in rank order, on every process. Sent as
    JSON bytes in tensors, so nothing is unpickled."""
    if processes() == 1:
        return [obj]
    import json

    import torch.distributed as dist

    dev = _comm_device()
    data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=dev)
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(processes())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.long, device=dev))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[:len(data)] = data
    chunks = [torch.zeros(longest, dtype=torch.uint8, device=dev) for _ in range(processes())]
    dist.all_gather(chunks, padded)
    return [json.loads(bytes(c[:int(s.item())].cpu().tolist()).decode()) for c, s in zip(chunks, sizes)]
