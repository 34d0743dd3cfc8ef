"""Plot MiniSD's training log (loss curve and judge accuracy over UNet steps).

    python benchmarks/minisd_training_plot.py [--log erasure/worlds/mini/weights/training_log.jsonl] [--out docs/minisd]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--log", type=Path, default=Path("erasure/worlds/mini/weights/training_log.jsonl"))
    p.add_argument("--out", type=Path, default=Path("docs/minisd"))
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval"]) for r in rows if "eval" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot([s for s, _ in loss], [v for _, v in loss], lw=0.8)
    a.set(xlabel="UNet step (batch 64)", ylabel="min-SNR-5 weighted eps MSE", title="MiniSD UNet training loss", yscale="log")
    for key in ("object", "color", "style"):
        b.plot([s for s, _ in evals], [e[key] for _, e in evals], marker="o", label=key)
    b.set(xlabel="UNet step", ylabel="judge accuracy (36 prompts x 2)", ylim=(0, 1), title="Generations judged")
    b.legend()
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "training_curves.png", dpi=110)
    print(f"wrote {args.out / 'training_curves.png'} ({len(loss)} loss points, {len(evals)} evaluations)")


if __name__ == "__main__":
    main()
