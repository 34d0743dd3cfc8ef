"""The LoRA rank table on MiniSD: the ESD-x circle erasure exported at several ranks, each file
loaded by diffusers' own `load_lora_weights` onto MiniSD and judged per object.

    python benchmarks/lora_ranks_minisd.py [--ranks 1,4,16,64] [--images-per-prompt 4] [--out runs/lora_ranks]

Prints, for the base, the erasure and each rank: the file size, the worst layer's relative
approximation error, circle accuracy, the other objects' mean accuracy and the largest drop of an
other object from the base; then the smallest rank that keeps the erasure bars (circle <= 0.10,
every other object within 0.05 of the base). Writes OUT/table.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from erase_minisd import evaluate_objects  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", default="1,4,16,64")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--concept", default="circle")
    p.add_argument("--out", type=Path, default=Path("runs/lora_ranks"))
    args = p.parse_args()

    from erasure.cli import run
    from erasure.eval.runner import pipeline_generate
    from erasure.lora import export_lora
    from erasure.pipelines import load_pipeline

    erasure = args.out / "esd-x"
    if not (erasure / "erasure_config.json").exists():
        assert run(["train", "--concept", args.concept, "--method", "esd-x", "--out", str(erasure), "--no-grid"]) == 0
    n = args.images_per_prompt
    rows = {"base": ({}, evaluate_objects("minisd", n, args.out / "cache" / "base")),
            "erasure": ({"bytes": (erasure / "erasure_model.safetensors").stat().st_size},
                        evaluate_objects(str(erasure), n, args.out / "cache" / "erasure"))}
    for rank in [int(r) for r in args.ranks.split(",")]:
        file = args.out / f"esd-x-rank{rank}.safetensors"
        file.unlink(missing_ok=True)
        exported = export_lora(erasure, file, rank, "diffusers")
        pipe = load_pipeline("minisd", device="cpu")
        pipe.load_lora_weights(str(file))
        pipe.set_progress_bar_config(disable=True)
        worst = max(f.relative_error for f in exported.layers)
        rows[f"rank {rank}"] = ({"bytes": exported.bytes, "worst_error": worst, "rank": rank},
                                evaluate_objects("minisd", n, args.out / "cache" / f"rank{rank}", make=pipeline_generate(pipe)))
    base = rows["base"][1]
    table, keeps = [], None
    print(f"{'model':<10} {'MB':>7} {'worst err':>9} {args.concept:>7} {'others':>7} {'worst drop':>10}")
    for label, (info, acc) in rows.items():
        others = [o for o in acc if o != args.concept]
        drop = max(base[o]["object_acc"] - acc[o]["object_acc"] for o in others)
        mean = sum(acc[o]["object_acc"] for o in others) / len(others)
        entry = {"model": label, **info, "concept_acc": acc[args.concept]["object_acc"], "others_mean": mean,
                 "worst_other_drop": drop}
        table.append(entry)
        size = f"{info['bytes'] / 1e6:7.2f}" if "bytes" in info else f"{'':>7}"
        err = f"{info['worst_error']:9.3f}" if "worst_error" in info else f"{'':>9}"
        print(f"{label:<10} {size} {err} {entry['concept_acc']:7.3f} {mean:7.3f} {drop:10.3f}")
        if "rank" in info and keeps is None and entry["concept_acc"] <= 0.10 and drop <= 0.05:
            keeps = info["rank"]
    print(f"smallest rank that keeps the bars (circle <= 0.10, others within 0.05 of base): {keeps}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.json").write_text(json.dumps({"rows": table, "smallest_rank_keeping_bars": keeps,
                                                     "images_per_prompt": n}, indent=2) + "\n")


if __name__ == "__main__":
    main()
