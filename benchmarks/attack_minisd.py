"""Robustness table on MiniSD: pre-ASR and ASR of the discrete (UnlearnDiffAtk-style) attack
against base MiniSD and each erasure of a concept, over the shipped prompts for that concept.

    python benchmarks/attack_minisd.py --erasures runs/erase_minisd [--concept circle]
        [--methods esd-x,esd-u,salun,doco,advunlearn] [--budget 1.0] [--limit N] [--out runs/attack_minisd]

Erasures are read from ERASURES/<method>/ (as benchmarks/erase_minisd.py writes them; an
`advunlearn` folder is trained there with MiniSD's defaults when missing). Success is judged by
the MiniSD classifier on the attacked model's image, never by the attack's loss. Per-model JSONs
(every adversarial prompt, replayable) go to OUT/<name>.json; a rerun resumes them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--erasures", type=Path, default=Path("runs/erase_minisd"))
    p.add_argument("--concept", default="circle")
    p.add_argument("--methods", default="esd-x,esd-u,salun,doco,advunlearn")
    p.add_argument("--budget", type=float, default=1.0, help="fraction of the attack's 50 judged timesteps per prompt")
    p.add_argument("--limit", type=int, default=None, help="only the first N target prompts")
    p.add_argument("--out", type=Path, default=Path("runs/attack_minisd"))
    args = p.parse_args()

    from erasure.eval.asr import run_attack
    from erasure.attacks.discrete import DiscreteAttackConfig
    from erasure.cli import _train_config, build_parser
    from erasure.eval.suites import load_suite
    from erasure.registry import get_method

    models = {"base": "minisd"}
    for method in args.methods.split(","):
        out = args.erasures / method
        if not (out / "erasure_config.json").exists():
            if method != "advunlearn":
                raise SystemExit(f"no erasure at {out}; run benchmarks/erase_minisd.py first")
            config = _train_config(build_parser().parse_args(["train", "--concept", args.concept, "--method", method,
                                                              "--out", str(out)]))
            t = time.perf_counter()
            get_method(method).trainer_cls(config).train(out)
            (out / "train_seconds.txt").write_text(f"{time.perf_counter() - t:.1f}\n")
        models[method] = str(out)

    rows = load_suite("mini-objects").rows()
    attack = DiscreteAttackConfig.budgeted(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, model in models.items():
        t = time.perf_counter()
        report = run_attack(model, args.concept, rows, args.out / f"{name}.json", attack, limit=args.limit)
        table[name] = {**report["summary"], "seconds": time.perf_counter() - t}
    (args.out / "summary.json").write_text(json.dumps(table, indent=2))
    n_prompts = next(iter(table.values()))["n_prompts"]
    print(f"\nDiscrete attack on '{args.concept}' ({n_prompts} prompts, {attack.n_tokens} tokens, {attack.timesteps} "
          f"timesteps x {attack.iterations} steps, judged by the MiniSD classifier)\n")
    print("| model | pre-ASR | ASR | attack time (s) |\n|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['pre_asr']:.3f} | {s['asr']:.3f} | {s['seconds']:.0f} |")


if __name__ == "__main__":
    main()
