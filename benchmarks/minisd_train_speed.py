"""Wall time of the README's first command, `erasure train --concept circle` (ESD-x, MiniSD
defaults), by phase, and the erasure bars of what it trained.

    python benchmarks/minisd_train_speed.py [--images-per-prompt 4] [--cache runs/erase_minisd/cache]
                                            [--no-bars] [-- EXTRA TRAIN FLAGS]

One run in a subprocess into a fresh --out under a temp folder. Phases are read off its console
output as it arrives: start-up (Python, imports, loading MiniSD, the trainer's setup) until the
progress bar appears; training until the grid announces itself ("comparison grid: ..."); the
grid until the process ends. Also printed: the CPU seconds of the subprocess (user + system,
`resource.getrusage(RUSAGE_CHILDREN)`), which say how much of the wall time was the command's
own when other work shares the cores. Then the bars (the mini-objects suite, as
benchmarks/erase_minisd.py measures them): the judge's circle accuracy of the erasure (bar <=
0.10) and every other object's accuracy against the base model's (bar: within 0.05). Figures
only: nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def run_timed(cmd: list[str]) -> tuple[list[tuple[float, str]], float, float, int]:
    """Run `cmd`; every console line (tqdm's \\r updates too) with its arrival time since start,
    the wall seconds, the CPU seconds and the exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []
    lock = threading.Lock()

    def read(stream) -> None:
        buf = b""
        while chunk := stream.read1(4096):
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            with lock:
                lines.extend((time.perf_counter() - start, d.decode(errors="replace")) for d in done if d.strip())
        if buf.strip():
            with lock:
                lines.append((time.perf_counter() - start, buf.decode(errors="replace")))

    readers = [threading.Thread(target=read, args=(s,)) for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    code = proc.wait()
    for r in readers:
        r.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return sorted(lines), wall, cpu, code


def first(lines: list[tuple[float, str]], pattern: str) -> float | None:
    return next((t for t, line in lines if re.search(pattern, line)), None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images-per-prompt", type=int, default=4, help="images per mini-objects prompt for the bars")
    p.add_argument("--cache", type=Path, default=Path("runs/erase_minisd/cache"),
                   help="image cache of the bars' evaluation (the base model's images are reused from it)")
    p.add_argument("--no-bars", action="store_true", help="time the command only")
    p.add_argument("extra", nargs="*", help="more `erasure train` flags, after --")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="minisd_train_speed_") as tmp:
        out = Path(tmp) / "no-circle"
        cmd = [sys.executable, "-m", "erasure.cli", "train", "--concept", "circle", "--out", str(out), *args.extra]
        env_threads = os.environ.get("OMP_NUM_THREADS", "unset")
        print("running:", " ".join(cmd[2:]), f"(OMP_NUM_THREADS={env_threads})")
        lines, wall, cpu, code = run_timed(cmd)
        if code != 0:
            print("\n".join(line for _, line in lines[-20:]))
            sys.exit(f"the command failed with exit code {code}")
        bar = first(lines, r"esd-x 'circle'")
        grid = first(lines, r"^comparison grid:")
        refreshes = [t for t, line in lines if "checkpoint:" in line]
        phases = [("start-up (imports, load, setup)", 0.0, bar or 0.0),
                  ("training (with its checkpoints)", bar or 0.0, grid or wall),
                  ("comparison grid", grid or wall, wall)]
        print("\n| phase | wall s |\n|---|---|")
        for name, a, b in phases:
            print(f"| {name} | {b - a:.1f} |")
        print(f"| total | {wall:.1f} |\n\nCPU time of the command: {cpu:.1f} s (user + system; {cpu / wall:.2f} cores "
              f"busy on average); checkpoints at {', '.join(f'{t:.0f} s' for t in refreshes) or 'none'}")
        if grid is not None:
            print(next(line for _, line in lines if line.startswith("comparison grid:")))
        if args.no_bars:
            return

        sys.path.insert(0, str(Path(__file__).parent))
        from erase_minisd import evaluate_objects
        from erasure.worlds.mini.world import OBJECTS

        t = time.perf_counter()
        base = evaluate_objects("minisd", args.images_per_prompt, args.cache)
        erased = evaluate_objects(str(out), args.images_per_prompt, args.cache)
        print(f"\nbars ({args.images_per_prompt} images x 24 prompts per object, {time.perf_counter() - t:.0f} s):")
        print("| object | base | erased | change |\n|---|---|---|---|")
        for o in OBJECTS:
            b, e = base[o]["object_acc"], erased[o]["object_acc"]
            print(f"| {o} | {b:.3f} | {e:.3f} | {e - b:+.3f} |")
        worst = min(erased[o]["object_acc"] - base[o]["object_acc"] for o in OBJECTS if o != "circle")
        print(f"circle accuracy {erased['circle']['object_acc']:.3f} (bar <= 0.10); worst other object "
              f"{worst:+.3f} against the base (bar >= -0.05)")


if __name__ == "__main__":
    main()
