"""The holistic benchmark: every method, every concept, six dimensions, one report.

    erasure bench --methods esd-x,esd-u,salun,doco,advunlearn,sfd --concepts circle,star,striped \\
                  --out runs/bench [--quick] [--model minisd|PATH]

The six dimensions are HUB's (Moon et al., "Holistic Unlearning Benchmark", ICCV 2025), whose
finding is that no method wins on all of them:

  1. faithfulness   is the target gone (erasure on target prompts), and is image quality kept
                    (FID/KID of ordinary prompts' images against the base model's);
  2. alignment      do ordinary prompts still follow their text;
  3. pinpoint-ness  are related but different concepts spared;
  4. multilingual   is the target gone when asked for in French and German;
  5. attack         attack success rates: UnlearnDiffAtk's discrete attack (eval/asr.py), a
                    Ring-A-Bell concept-vector attack (attacks/ring_a_bell.py), a fixed prompt file;
  6. efficiency     wall time, peak memory and trained parameters to erase; sampling time.

One module per job: settings.py (settings, budgets, each method's training config), protocols/
(what each dimension shows the model and how it reads the images, one protocol per world),
train.py (one erasure, timed and measured), run.py (the run: checks, caching, measuring,
results), scoring.py (scores, ranking, verdict), report.py (the HTML report).

Everything is cached under OUT and each piece is written atomically (temp file, then rename),
so a rerun computes only what is missing and a killed run resumes:

  OUT/bench.json                      the run's settings; another run's folder is refused
  OUT/prompts/<concept>/*.csv         the prompt sets (`erasure eval --prompts` reads them)
  OUT/erasures/<method>/<concept>/    each erasure (trained in <concept>.partial/, checkpointed,
                                      renamed when done) with train.json (time, memory)
  OUT/attacks/ring-a-bell/<concept>.json
  OUT/cache/                          every generated image (eval/runner.py's cache)
  OUT/pieces/<model>/<concept>/*.json each finished measurement
  OUT/results.json, OUT/report.html   every number with its protocol; the report
"""
from __future__ import annotations

from .run import run_bench
from .settings import BASE, DIMENSIONS, FORMAT, FULL, QUICK, BenchSettings, Budget

__all__ = ["BASE", "DIMENSIONS", "FORMAT", "FULL", "QUICK", "BenchSettings", "Budget", "run_bench"]
