"""What every protocol shares: a prompt set (a CSV of the run's folder, so `erasure eval
--prompts THAT.csv` sees the very prompts and seeds the bench used), even subsets, and the
user's fixed adversarial prompt file."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserError
from ...eval.suites import Row, Suite, read_rows

LANGUAGES = ("fr", "de")


@dataclass
class PromptSet:
    """One prompt set of one concept: its CSV, images per prompt, and the metrics that read it."""
    name: str
    path: Path
    images_per_prompt: int
    metrics: list[str]
    settings: dict[str, dict] = field(default_factory=dict)
    group_by: str | None = None

    def suite(self) -> Suite:
        return Suite(name=f"bench-{self.name}", description=f"erasure bench: {self.name} prompts",
                     prompt_files=[self.path], images_per_prompt=self.images_per_prompt, metrics=list(self.metrics),
                     group_by=self.group_by)

    def rows(self) -> list[Row]:
        return read_rows(self.path, self.group_by)


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (all of them when n >= len): a subset that still
    covers every colour / style / object the list runs through in order."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    from ...files import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def read_adversarial_prompts(path: str | Path) -> list[dict]:
    """A user's fixed adversarial prompts: .txt (one per line) or .csv (`prompt`, optional `concept`)."""
    from ...prompt_files import read_prompt_table
    rows = [{"prompt": r.get("prompt", ""), "concept": r.get("concept", "")}
            for r in read_prompt_table(path, "--adversarial-prompts")]
    rows = [r for r in rows if r["prompt"]]
    if not rows:
        raise UserError(f"--adversarial-prompts: {path} holds no prompt")
    return rows


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None
