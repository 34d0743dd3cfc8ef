"""The MiniSD erasure table: erase an object with each method, then judge base vs erased per object.

    python benchmarks/erase_minisd.py [--concept circle] [--methods esd-x,esd-u,salun,doco,advunlearn,sfd]
                                      [--images-per-prompt 4] [--reference] [--out runs/erase_minisd]

For each method: train with the CLI's MiniSD defaults (wall time printed, self-generated data
included for SalUn and DoCo: their cache is cleared first so the time is a cold run), then generate
`--images-per-prompt` images for each of the 24 prompts of every object (6 colours x 4 styles,
synonyms included) and report object/colour/style accuracy of the base and the erased model.
`--reference` adds each method trained with the reference sampling recipe (refresh_every=1),
to show the speed recipe does not weaken erasure or retention.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def evaluate_objects(model, images_per_prompt: int, cache: Path, make=None) -> dict[str, dict]:
    """Per object: object/colour/style accuracy over its 24 prompts (the mini-objects suite);
    `make`: an image maker (erasure.eval.runner.pipeline_generate) instead of `model`'s pipeline."""
    from erasure.eval.runner import evaluate
    from erasure.eval.suites import load_suite

    suite = load_suite("mini-objects")
    suite.images_per_prompt = images_per_prompt
    result, _, _ = evaluate(model, suite, cache, make=make)
    per_object: dict[str, dict] = {}
    for row in result["per_prompt"]:
        acc = per_object.setdefault(row["group"], {"object_acc": [], "color_acc": [], "style_acc": []})
        for k in acc:
            acc[k].append(row[k])
    return {o: {k: sum(v) / len(v) for k, v in acc.items()} for o, acc in per_object.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concept", default="circle")
    p.add_argument("--methods", default="esd-x,esd-u,salun,doco,advunlearn,sfd")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--reference", nargs="?", const="esd-x,esd-u", default="",
                   help="also train these ESD variants with the reference sampling (default list: esd-x,esd-u)")
    p.add_argument("--out", type=Path, default=Path("runs/erase_minisd"))
    args = p.parse_args()

    from erasure.cli import _train_config, build_parser
    from erasure.registry import get_method
    from erasure.worlds.mini.world import OBJECTS

    runs = {"base": ("minisd", None)}
    os.environ["ERASURE_CACHE"] = str(args.out / "erasure-cache")  # self-generated data starts cold
    for method in args.methods.split(","):
        reference = method in args.reference.split(",")
        variants = [("", [])] + ([(" (reference sampling)", ["--refresh-every", "1"])] if reference else [])
        for label, extra in variants:
            out = args.out / (method + ("-reference" if extra else ""))
            cli = ["train", "--concept", args.concept, "--method", method, "--out", str(out), *extra]
            timing = out / "train_seconds.txt"
            if not timing.exists():  # a rerun reuses finished erasures (and a killed run resumes)
                config = _train_config(build_parser().parse_args(cli))
                t = time.perf_counter()
                get_method(method).trainer_cls(config).train(out)
                timing.write_text(f"{time.perf_counter() - t:.1f}\n")
            runs[method + label] = (str(out), float(timing.read_text()))
    results = {name: {"train_seconds": secs, "per_object": evaluate_objects(model, args.images_per_prompt, args.out / "cache")}
               for name, (model, secs) in runs.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    names = list(results)
    print(f"\nErasing '{args.concept}' from MiniSD; judge accuracy, {args.images_per_prompt} images x 24 prompts per object\n")
    print("| object | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for o in OBJECTS:
        print(f"| {o} object_acc | " + " | ".join(f"{results[n]['per_object'][o]['object_acc']:.3f}" for n in names) + " |")
    for attr in ("color_acc", "style_acc"):
        mean = {n: sum(r[attr] for r in results[n]["per_object"].values()) / len(OBJECTS) for n in names}
        print(f"| all prompts {attr} | " + " | ".join(f"{mean[n]:.3f}" for n in names) + " |")
    print("| train time (s) | " + " | ".join("-" if results[n]["train_seconds"] is None else
                                           f"{results[n]['train_seconds']:.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
