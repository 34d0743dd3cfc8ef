"""How long `erasure generate` takes for 16 images at MiniSD's default steps on this machine.

    python benchmarks/generate_speed.py [--repeats 3]

Prints the wall time of the whole command (process start, imports, model load, sampling, PNG
writing) and of the sampling alone, median over repeats. The issue's bar: under 15 s on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-images", type=int, default=16)
    args = p.parse_args()

    import torch

    from erasure.eval.generation import generate
    from erasure.model_ref import MINISD_PATH, default_sampling
    from erasure.pipelines import load_pipeline

    walls = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "erasure.cli", "generate", "--prompt", "a striped red circle",
                            "--num-images", str(args.num_images), "--out", out], check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
    pipe = load_pipeline("minisd", device="cpu")
    sampling = default_sampling(MINISD_PATH)
    gen = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        generate(pipe, ["a striped red circle"], args.num_images, 0, sampling)
        gen.append(time.perf_counter() - t)
    print(f"torch threads: {torch.get_num_threads()}, sampling: {sampling}")
    print(f"erasure generate, {args.num_images} images, whole command: median {statistics.median(walls):.2f} s "
          f"(runs: {', '.join(f'{w:.2f}' for w in walls)})")
    print(f"sampling alone: median {statistics.median(gen):.2f} s; bar: whole command < 15 s")


if __name__ == "__main__":
    main()
