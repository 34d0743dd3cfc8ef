"""Evaluation: metrics (metrics/, one module each) applied to generated images, suites
(suites.py), cached generation and scoring (runner.py), the `erasure eval` flow (run.py), the
attack success rate (asr.py), seeds and plain generation (generation.py), the before/after grid
(before_after.py) and the HTML report (report.py). Detectors live in erasure/judges/."""
