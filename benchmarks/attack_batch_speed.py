"""Throughput of the discrete attack: N prompts attacked one at a time vs together in one batch.

    python benchmarks/attack_batch_speed.py [--model minisd|ERASURE] [--prompts 8] [--timesteps 2] [--iterations 10]

Both runs do the same work: every prompt runs every timestep (the judge is asked, a real image
is generated for each new text, but success is ignored so no prompt stops early). Prints the
two wall times and their ratio, measured in this one run; the per-prompt token choices of the
two runs are compared too (they should agree: batching changes the speed, not the attack).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minisd")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--timesteps", type=int, default=2)
    p.add_argument("--iterations", type=int, default=10)
    args = p.parse_args()

    import torch

    from erasure.eval.asr import target_rows
    from erasure.attacks.discrete import DiscreteAttackConfig, discrete_attack, discrete_attack_batch
    from erasure.eval.suites import load_suite
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False)
    prompts = [r.prompt for _, r in target_rows(load_suite("mini-objects").rows(), "circle")][: args.prompts]
    seeds = list(range(len(prompts)))
    with torch.no_grad():
        targets = pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds],
                       output_type="latent").images.float()
    cfg = DiscreteAttackConfig(timesteps=args.timesteps, iterations=args.iterations)

    def judge_nothing(texts: list[str], rows: list[int]) -> list[bool]:
        with torch.no_grad():
            pipe(texts, generator=[torch.Generator().manual_seed(seeds[r]) for r in rows], output_type="pt")
        return [False] * len(texts)

    t = time.perf_counter()
    alone = [discrete_attack(pipe, prompt, targets[i:i + 1], lambda text, i=i: judge_nothing([text], [i])[0], cfg)
             for i, prompt in enumerate(prompts)]
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    batched = discrete_attack_batch(pipe, prompts, targets, lambda rows, texts: judge_nothing(texts, rows), cfg)
    together = time.perf_counter() - t
    same = sum(a["token_ids"] == b["token_ids"] for a, b in zip(alone, batched))
    print(f"{len(prompts)} prompts x {cfg.timesteps} timesteps x {cfg.iterations} iterations on {args.model} "
          f"({torch.get_num_threads()} threads)")
    print(f"one at a time: {sequential:.1f} s   batched: {together:.1f} s   speed-up: {sequential / together:.2f}x   "
          f"same tokens: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
