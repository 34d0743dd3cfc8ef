"""Several processes against one: wall time and equality of `erasure eval` and `erasure train`.

    python benchmarks/several_processes.py [--model minisd] [--processes 1,2] [--suite mini] [--limit 8]
                                           [--method esd-x] [--concept circle] [--steps 20] [--batch-size 1]
                                           [--out runs/several_processes]

For each process count N: `erasure eval` into a fresh cache (wall seconds, images per second),
and `erasure train` with `--batch-size B` per process (wall seconds, steps per second). N = 1
runs `python -m erasure`; N > 1 runs `accelerate launch --multi_gpu --num_processes N -m erasure`
(NCCL on CUDA, gloo on a machine without CUDA). Equality, printed beside the times: eval's
`summary` and `per_prompt` against N = 1; training against one process with the global batch
N x B (run once per N), as the relative L1 of the change to the base (sum |a - b| / sum |a - base|)
and the largest element's difference. Figures only: nothing is asserted.
On a GPU machine pass --processes 1,2,4,8 (one process per GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(n: int, *args: str) -> list[str]:
    if n == 1:
        return [sys.executable, "-m", "erasure", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port()), "-m", "erasure", *args]


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if rc != 0:
        raise SystemExit(f"failed (exit {rc}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def base_tensors(model: str) -> dict:
    from erasure import load_pipeline
    pipe = load_pipeline(model, device="cpu")
    return ({f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
            | {f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()})


def compare(a: Path, b: Path, base: dict) -> tuple[float, float]:
    from safetensors.torch import load_file
    x, y = load_file(str(a / "erasure_model.safetensors")), load_file(str(b / "erasure_model.safetensors"))
    apart = sum((x[k].float() - y[k].float()).abs().sum().item() for k in x)
    moved = sum((x[k].float() - base[k].float()).abs().sum().item() for k in x)
    return apart / moved, max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minisd")
    p.add_argument("--processes", default="1,2")
    p.add_argument("--suite", default="mini")
    p.add_argument("--limit", type=int, default=8)
    p.add_argument("--method", default="esd-x")
    p.add_argument("--concept", default="circle")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/several_processes"))
    args = p.parse_args()
    counts = [int(x) for x in args.processes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ERASURE_CACHE", str(args.out / "erasure-cache"))
    rows, evals = [], {}
    base = base_tensors(args.model)
    for n in counts:
        d = args.out / f"n{n}"
        d.mkdir(exist_ok=True)
        print(f"== {n} process(es): eval", flush=True)
        eval_s = timed(command(n, "eval", "--model", args.model, "--suite", args.suite, "--limit", str(args.limit),
                               "--json", str(d / "eval.json"), "--cache", str(d / f"cache-{time.time_ns()}")),
                       d / "eval.log")
        evals[n] = json.loads((d / "eval.json").read_text())
        images = evals[n]["generation"]["generated"]
        train = ["train", "--method", args.method, "--concept", args.concept, "--model", args.model,
                 "--steps", str(args.steps), "--no-grid", "--checkpoint-every", "0"]
        print(f"== {n} process(es): train, batch {args.batch_size} per process", flush=True)
        train_s = timed(command(n, *train, "--batch-size", str(args.batch_size), "--out", str(d / "erasure")),
                        d / "train.log")
        rel = big = None
        if n > 1:  # one process with the same global batch
            print(f"== 1 process: train, batch {n * args.batch_size} (the global batch)", flush=True)
            timed(command(1, *train, "--batch-size", str(n * args.batch_size), "--out", str(d / "one-global")),
                  d / "one-global.log")
            rel, big = compare(d / "erasure", d / "one-global", base)
        same = evals[n]["summary"] == evals[counts[0]]["summary"] and evals[n]["per_prompt"] == evals[counts[0]]["per_prompt"]
        rows.append({"processes": n, "eval_s": round(eval_s, 1), "images_per_s": round(images / eval_s, 2),
                     "eval_equal_to_first": same, "train_s": round(train_s, 1),
                     "steps_per_s": round(args.steps / train_s, 3), "train_rel_l1_vs_one_process": rel,
                     "train_max_diff_vs_one_process": big})
    print("\n| processes | eval s | images/s | eval = first row | train s | steps/s | train vs 1 process, same global batch (rel. L1; max) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        vs = "-" if r["train_rel_l1_vs_one_process"] is None else \
            f"{r['train_rel_l1_vs_one_process']:.2e}; {r['train_max_diff_vs_one_process']:.2e}"
        print(f"| {r['processes']} | {r['eval_s']} | {r['images_per_s']} | {r['eval_equal_to_first']} | {r['train_s']} | "
              f"{r['steps_per_s']} | {vs} |")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
