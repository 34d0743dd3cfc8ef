"""Every method x every attack on MiniSD: pre-ASR and ASR of the discrete, Ring-A-Bell, inversion
and relearning attacks over all 24 circle prompts of `mini-objects`, at the benchmark's default
budgets (erasure/bench/settings.py FULL), judged by the MiniSD classifier.

    python benchmarks/attacks_minisd.py --erasures runs/m [--methods esd-x,esd-u,salun,doco,advunlearn,adv-esd]
        [--attacks discrete,ring-a-bell,inversion,relearn] [--out runs/attacks_minisd] [--table docs/attack/table.json]

Erasures are read from ERASURES/<method>/ (`erasure train --method M --concept circle --out ERASURES/M`).
Each (model, attack) writes OUT/<model>-<attack>.json through `erasure attack`'s own function, so
every result carries its harness and a rerun reuses what is finished. Prints the table (markdown)
and writes it as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def budget_settings(attack: str, rab_generations: int | None = None) -> tuple[float, dict]:
    """(budget, settings) of each attack as the benchmark's FULL budget runs it (Ring-A-Bell's
    generations: `rab_generations` when given)."""
    from erasure.bench.settings import FULL, relearn_checkpoints
    if attack == "discrete":
        return 1.0, {"timesteps": FULL.attack_timesteps, "iterations": FULL.attack_iterations}
    if attack == "ring-a-bell":
        return 1.0, {"population": FULL.rab_population, "generations": rab_generations or FULL.rab_generations}
    if attack == "inversion":
        return FULL.inversion_budget, {}
    return 1.0, {"checkpoints": relearn_checkpoints(FULL.relearn_steps)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--erasures", type=Path, default=Path("runs/m"))
    p.add_argument("--concept", default="circle")
    p.add_argument("--methods", default="esd-x,esd-u,salun,doco,advunlearn,adv-esd")
    p.add_argument("--attacks", default="discrete,ring-a-bell,inversion,relearn")
    p.add_argument("--out", type=Path, default=Path("runs/attacks_minisd"))
    p.add_argument("--table", type=Path, default=None, help="also write the table here (JSON)")
    p.add_argument("--skip-base", action="store_true", help="only the erasures (another run measures the base)")
    p.add_argument("--rab-generations", type=int, default=None, help="Ring-A-Bell's generations (default the "
                   "paper's 3000: about 25 min per prompt on one CPU thread for MiniSD's text encoder)")
    args = p.parse_args()

    from erasure.eval.attacks import attack_command

    models = {} if args.skip_base else {"base": "minisd"}
    for method in args.methods.split(","):
        if not (args.erasures / method / "erasure_config.json").exists():
            raise SystemExit(f"no erasure at {args.erasures / method}; train it: erasure train --method {method} "
                             f"--concept {args.concept} --out {args.erasures / method}")
        models[method] = str(args.erasures / method)
    args.out.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict] = {}
    for name, model in models.items():
        for attack in args.attacks.split(","):
            budget, settings = budget_settings(attack, args.rab_generations)
            t = time.perf_counter()
            report = attack_command({"model": model, "attack": attack, "concept": args.concept, "suite": "mini-objects",
                                     "budget": budget, "settings": settings, "seed": 0},
                                    args.out / f"{name}-{attack}.json")
            s = report["summary"]
            table.setdefault(name, {})[attack] = {"pre_asr": s["pre_asr"], "asr": s["asr"], "n": s["n_prompts"],
                                                  "asr_by_steps": s.get("asr_by_steps"),
                                                  "seconds": round(time.perf_counter() - t, 1)}
            print(f"{name:12s} {attack:12s} pre-ASR {s['pre_asr']:.3f}  ASR {s['asr']:.3f}"
                  + (f"  by k {s['asr_by_steps']}" if s.get("asr_by_steps") else ""), flush=True)
    attacks = args.attacks.split(",")
    print("\n| model | " + " | ".join(f"{a} pre-ASR / ASR" for a in attacks) + " |")
    print("|---|" + "---|" * len(attacks))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[a]['pre_asr']:.3f} / {row[a]['asr']:.3f}" for a in attacks) + " |")
    if "relearn" in attacks:
        ks = list(next(iter(table.values()))["relearn"]["asr_by_steps"])
        print("\n| model | " + " | ".join(f"relearn k={k}" for k in ks) + " |")
        print("|---|" + "---|" * len(ks))
        for name, row in table.items():
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in row["relearn"]["asr_by_steps"].values()) + " |")
    (args.out / "table.json").write_text(json.dumps(table, indent=2))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
