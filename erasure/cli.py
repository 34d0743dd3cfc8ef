"""The `erasure` command line: generate, eval (train, export, bench and demo join as they land).

Every mistake a user can fix ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import UserError


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UserError(f"--{name} must be at least 1 (got {value})")
    return value


def _sampling(args, model_path) -> dict:
    from .models import default_sampling
    sampling = default_sampling(model_path)
    if args.steps is not None:
        sampling["num_inference_steps"] = _positive("steps", args.steps)
    if args.guidance is not None:
        sampling["guidance_scale"] = args.guidance
    return sampling


def cmd_generate(args) -> int:
    from .images import grid, save_png
    from .eval.attributes import generate
    from .models import load_pipeline, resolve_model

    _positive("num-images", args.num_images)
    if not args.prompt.strip():
        raise UserError("--prompt is empty; say what to draw, e.g. --prompt 'a red circle'")
    path = resolve_model(args.model)
    pipe = load_pipeline(path, device=args.device)
    images = generate(pipe, [args.prompt], args.num_images, args.seed, _sampling(args, path), desc="generate")
    out = Path(args.out)
    for i, image in enumerate(images):
        save_png(image, out / f"{i:03d}.png")
    save_png(grid(images, nrow=min(8, len(images)), scale=2 if images.shape[-1] <= 128 else 1), out / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0


def cmd_eval(args) -> int:
    from .eval.attributes import attribute_accuracy, read_prompt_csv
    from .images import grid, save_png
    from .io_utils import write_json
    from .models import load_pipeline, resolve_model

    _positive("images-per-prompt", args.images_per_prompt)
    rows = read_prompt_csv(args.prompts)
    path = resolve_model(args.model)
    pipe = load_pipeline(path, device=args.device)
    result = attribute_accuracy(pipe, rows, args.images_per_prompt, args.seed, _sampling(args, path), str(pipe.device))
    images = result.pop("images")
    result["settings"] = {"model": str(args.model), "prompts": str(args.prompts), "images_per_prompt": args.images_per_prompt,
                          "seed": args.seed, **_sampling(args, path)}
    write_json(args.json, result)
    if args.grid:
        save_png(grid(images, nrow=args.images_per_prompt, scale=2), args.grid)
    s = result["summary"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"object_acc {fmt(s['object_acc'])}  color_acc {fmt(s['color_acc'])}  style_acc {fmt(s['style_acc'])}  "
          f"({s['n_images']} images) -> {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="erasure", description="Erase concepts from text-to-image diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default="minisd", help="'minisd' (default), a Stable Diffusion folder or a cached hub id")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 25 for MiniSD)")
        sp.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")

    g = sub.add_parser("generate", help="write images for a prompt, and a grid")
    g.add_argument("--prompt", required=True)
    g.add_argument("--num-images", type=int, default=4)
    g.add_argument("--out", required=True, help="folder for the PNGs")
    model_args(g)
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="attribute accuracy of generations, judged by the MiniSD classifier")
    e.add_argument("--prompts", required=True, help="CSV with columns prompt,object,color,style")
    e.add_argument("--images-per-prompt", type=int, default=8)
    e.add_argument("--json", required=True, help="where to write the results")
    e.add_argument("--grid", default=None, help="optional PNG grid of every image, one row per prompt")
    model_args(e)
    e.set_defaults(func=cmd_eval)
    return p


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"erasure: error: {e}", file=sys.stderr)
        return 2


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
