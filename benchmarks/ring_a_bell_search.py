"""One share of Ring-A-Bell's search, for running the paper's budget (population 200, 3000
generations: about 600k text-encoder forwards per prompt) on several CPU cores or machines.

Prompt i is searched by share i mod N. Each prompt's result lands in erasure's cache as soon as it
is found (a killed share resumes at its prompt), where `erasure attack --attack ring-a-bell` with the
same model, suite, concept, budget and settings then finds every prompt and only draws and judges:

    OMP_NUM_THREADS=1 python benchmarks/ring_a_bell_search.py --suite mini-objects --concept circle --shard 0/2 &
    OMP_NUM_THREADS=1 python benchmarks/ring_a_bell_search.py --suite mini-objects --concept circle --shard 1/2 &
    wait; erasure attack --attack ring-a-bell --suite mini-objects --concept circle --model out/no-circle --json rab.json

The search reads the base model's text encoder only, so one search serves every erasure of that base.
With `--parts DIR` each prompt's result is kept in DIR instead (a record that can be committed or
copied to another machine and read back by the next run); the last share to finish puts the whole
set in the cache.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from erasure.cli import _set_pairs
from erasure.eval.attacks import _targets, attack_config, ring_a_bell_search
from erasure.eval.suites import load_suite, read_rows
from erasure.model_ref import resolve
from erasure.worlds import world_for


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minisd", help="the base model, or an erasure of it (its base is searched)")
    p.add_argument("--suite")
    p.add_argument("--prompts", help="a CSV of target prompts instead of --suite")
    p.add_argument("--concept", required=True)
    p.add_argument("--shard", default="0/1", help="K/N: this process searches prompts i with i mod N == K")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int)
    p.add_argument("--set", dest="settings", action="append", default=[], help="KEY=VALUE of the attack's config")
    p.add_argument("--parts", type=Path, help="keep each prompt's result in this folder (a record to commit or copy "
                   "between machines; read back by the next run) instead of the cache's")
    args = p.parse_args()
    k, n = (int(x) for x in args.shard.split("/"))
    ref = resolve(args.model)
    rows = load_suite(args.suite).rows() if args.suite else read_rows(args.prompts, "object")
    settings = _set_pairs(args.settings)
    cfg = attack_config("ring-a-bell", ref, args.budget, **{"seed": args.seed, **settings})
    targets = _targets(rows, args.concept, world_for(ref), args.seed, dict(ref.sampling), args.limit)
    prompts = [t[0] for t in targets]
    mine = {i for i in range(len(prompts)) if i % n == k}
    start = time.perf_counter()
    found = ring_a_bell_search(ref, args.concept, prompts, cfg, only=mine, parts=args.parts)
    print(f"share {k}/{n}: {len(found['per_prompt'])} of {len(prompts)} prompts searched "
          f"({cfg.population} x {cfg.generations}) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
