"""Sampling speed of a one-step SFD erasure against its base model, side by side in one run.

    python benchmarks/sfd_speed.py --erasure runs/erase_minisd/sfd [--num-images 64] [--repeats 3]

Both pipelines draw the same prompts (MiniSD captions) in batches of `--batch-size`: the base at
its default sampler settings (MiniSD: 25 DDIM steps with classifier-free guidance 5, i.e. 50 UNet
evaluations per image), the SFD erasure in one UNet call without guidance. Timed alternately
(base, sfd, base, sfd, ...) so both see the same machine state; prints the median wall time of
each and their ratio. Images are decoded to tensors (VAE included) but not written to disk.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--erasure", required=True, help="an SFD erasure folder")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch

    from erasure.model_ref import model_sampling
    from erasure.pipelines import load_pipeline

    base_name = "minisd"
    pipes = {"base": (load_pipeline(base_name), model_sampling(base_name)),
             "sfd": (load_pipeline(args.erasure), model_sampling(args.erasure))}
    if pipes["sfd"][1]["num_inference_steps"] != 1:
        raise SystemExit(f"{args.erasure} is not a one-step erasure")
    prompts = ["a red circle", "a blue striped square", "a green dotted star", "a yellow heart"]
    prompts = (prompts * args.num_images)[:args.num_images]

    def run(name: str) -> float:
        pipe, sampling = pipes[name]
        pipe.set_progress_bar_config(disable=True)
        t = time.perf_counter()
        for i in range(0, len(prompts), args.batch_size):
            batch = prompts[i:i + args.batch_size]
            gens = [torch.Generator().manual_seed(i + k) for k in range(len(batch))]
            with torch.no_grad():
                pipe(batch, generator=gens, output_type="pt", num_inference_steps=sampling["num_inference_steps"],
                     guidance_scale=sampling["guidance_scale"])
        return time.perf_counter() - t

    run("base"), run("sfd")  # warm-up (allocations, kernels)
    times: dict[str, list[float]] = {"base": [], "sfd": []}
    for _ in range(args.repeats):
        for name in times:
            times[name].append(run(name))
    base, sfd = statistics.median(times["base"]), statistics.median(times["sfd"])
    steps = pipes["base"][1]["num_inference_steps"]
    print(f"{args.num_images} images, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"base MiniSD ({steps} steps, guidance {pipes['base'][1]['guidance_scale']}): {base:.2f} s")
    print(f"SFD erasure (1 step, guidance 1): {sfd:.2f} s")
    print(f"speed-up: {base / sfd:.1f}x")


if __name__ == "__main__":
    main()
