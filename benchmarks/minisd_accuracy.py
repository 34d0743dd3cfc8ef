"""MiniSD's acceptance table: judge accuracy on fresh renders, and on MiniSD's own generations for
the shipped prompt sets (100 English prompts; 24 French + 24 German), 8 images per prompt.

    python benchmarks/minisd_accuracy.py [--images-per-prompt 8] [--out docs/minisd]

Writes accuracy.json and sample grids to --out and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images-per-prompt", type=int, default=8)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("docs/minisd"))
    args = p.parse_args()

    from erasure.eval.runner import evaluate
    from erasure.eval.suites import load_suite
    from erasure.images import grid
    from erasure.judges.minisd import load_judge
    from erasure.model_ref import MINISD_PATH, default_sampling
    from erasure.worlds.mini.train import judge_accuracy

    args.out.mkdir(parents=True, exist_ok=True)
    results = {"judge_on_renders_2000": judge_accuracy(load_judge("cpu"), 2000, 424242, torch.device("cpu"))}
    sampling = default_sampling(MINISD_PATH)
    if args.guidance is not None:
        sampling["guidance_scale"] = args.guidance
    if args.steps is not None:
        sampling["num_inference_steps"] = args.steps
    state = json.loads((MINISD_PATH / "training_state.json").read_text())
    for name, suite_name in (("attributes_en", "mini"), ("attributes_multilingual", "mini-multilingual")):
        suite = load_suite(suite_name)
        suite.images_per_prompt = args.images_per_prompt
        r, images, _ = evaluate("minisd", suite, args.out / "cache", sampling=sampling)
        grid(images[: 12 * args.images_per_prompt], nrow=args.images_per_prompt, scale=2).save(args.out / f"samples_{name}.png")
        results[name] = r["summary"]
    results["sampling"] = sampling
    results["unet_steps"] = state.get("unet_steps")
    (args.out / "accuracy.json").write_text(json.dumps(results, indent=2) + "\n")
    j = results["judge_on_renders_2000"]
    print(f"MiniSD at {results['unet_steps']} UNet steps, sampling {sampling}\n")
    print("| what | object | colour | style | bar |\n|---|---|---|---|---|")
    print(f"| judge, 2,000 fresh renders | {j['object']:.3f} | {j['color']:.3f} | {j['style']:.3f} | >= 0.98 each |")
    e, m = results["attributes_en"], results["attributes_multilingual"]
    print(f"| MiniSD, 100 EN prompts x {args.images_per_prompt} | {e['object_acc']:.3f} | {e['color_acc']:.3f} | "
          f"{e['style_acc']:.3f} | 0.92 / 0.92 / 0.85 |")
    print(f"| MiniSD, 48 FR+DE prompts x {args.images_per_prompt} | {m['object_acc']:.3f} | {m['color_acc']:.3f} | "
          f"{m['style_acc']:.3f} | object 0.85 |")


if __name__ == "__main__":
    main()
