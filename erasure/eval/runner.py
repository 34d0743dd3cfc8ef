"""Generate a suite's images (batched, deterministic per prompt and seed, cached on disk) and
compute its metrics.

Image k of row i uses seed `row.seed + k` (the public sets give a seed per row) or
`seed + 1000 * i + k`, and the row's guidance or the model's default. Every image is written to
`<cache>/<model key>/<image key>.png` as soon as its batch is done, so an interrupted run
resumes where it stopped; metrics always read the images back from the cache, so a fresh and a
resumed run score identical pixels. With several processes (`accelerate launch -m erasure eval`),
the batches of missing images are dealt round-robin between them (each batch exactly as one
process makes it: same prompts, seeds and batch, so the same pixels) and the main process alone
computes the metrics.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import distributed
from ..images import load_image, save_png
from ..judges.minisd import LABELS
from ..model_ref import ModelRef, resolve
from ..version import __version__
from .generation import image_seed
from .metrics import get_metric
from .suites import Row, Suite

__all__ = ["evaluate", "plan", "image_key", "pipeline_generate", "generate_cached", "per_prompt", "load_image"]


def image_key(prompt: str, seed: int, guidance: float, steps: int) -> str:
    return hashlib.sha1(json.dumps([prompt, seed, guidance, steps]).encode()).hexdigest()[:20]


def plan(rows: list[Row], images_per_prompt: int, seed: int, sampling: dict, row_guidance: bool = True) -> list[dict]:
    """One entry per image: row index, prompt, seed, guidance, steps and cache key. With
    `row_guidance=False` (a one-step generator, whose guidance is distilled into it) a row's own
    guidance is ignored and `sampling`'s applies."""
    items = []
    for i, row in enumerate(rows):
        for k in range(images_per_prompt):
            s = row.seed + k if row.seed is not None else image_seed(seed, i, k)
            g = row.guidance if row.guidance is not None and row_guidance else sampling["guidance_scale"]
            steps = sampling["num_inference_steps"]
            items.append({"row": i, "prompt": row.prompt, "seed": s, "guidance": g, "steps": steps,
                          "key": image_key(row.prompt, s, g, steps)})
    return items


def pipeline_generate(pipe, extra: dict | None = None) -> Callable:
    """The default image maker: a diffusers pipeline call for one batch of one guidance."""
    def make(prompts: list[str], seeds: list[int], guidance: float, steps: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return pipe(prompts, generator=gens, guidance_scale=guidance, num_inference_steps=steps,
                    output_type="pt", **(extra or {})).images.float().cpu()
    return make


def image_batches(items: list[dict], batch_size: int) -> list[list[dict]]:
    """`items` in batches of at most `batch_size`, one guidance and step count each."""
    by_setting: dict[tuple, list[dict]] = {}
    for it in items:
        by_setting.setdefault((it["guidance"], it["steps"]), []).append(it)
    return [group[start:start + batch_size] for group in by_setting.values() for start in range(0, len(group), batch_size)]


def generate_cached(make: Callable, items: list[dict], cache_dir: Path, batch_size: int = 32,
                    split: bool = True) -> dict[str, int]:
    """Make every image of `items` missing from `cache_dir`; returns {"generated": n, "cached": m}.
    With several processes and `split`, each makes its round-robin share of the batches, and all
    wait for the last; `split=False` makes them all here (a process working alone on its unit)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = [it for it in items if not (cache_dir / f"{it['key']}.png").exists()]
    # The batches are those of the whole plan, so a resumed run computes every image in the batch
    # it had in the first run: a batch's numbers depend on its size on some kernels, and a resume
    # must give the bytes an uninterrupted run gives. A batch with any image missing is made whole.
    keys = {it["key"] for it in missing}
    batches = [b for b in image_batches(items, batch_size) if any(it["key"] in keys for it in b)]
    mine = distributed.deal(batches) if split else batches
    bar = tqdm(total=sum(map(len, mine)), desc="generating", disable=not mine)
    for batch in mine:
        images = make([it["prompt"] for it in batch], [it["seed"] for it in batch], batch[0]["guidance"], batch[0]["steps"])
        for it, image in zip(batch, images):
            if it["key"] in keys:
                save_png(image, cache_dir / f"{it['key']}.png")
        bar.update(len(batch))
    bar.close()
    if split:
        distributed.wait()
    return {"generated": len(missing), "cached": len(items) - len(missing)}


def evaluate(model: str | Path | ModelRef, suite: Suite, cache_root: Path, seed: int = 0, limit: int | None = None,
             metric_settings: dict[str, dict] | None = None, sampling: dict | None = None, device: str | None = None,
             make: Callable | None = None, batch_size: int = 32, split: bool = True
             ) -> tuple[dict | None, torch.Tensor | None, list[Row]]:
    """Generate (cached) and score one model (a string, resolved here once, or a ModelRef) on one
    suite. Returns (results, images, rows). With several processes and `split` (the default),
    the images are made by all of them and scored by the main one: the others return
    (None, None, rows)."""
    ref = resolve(model)
    rows = suite.rows(limit)
    metrics = [get_metric(m, **(metric_settings or {}).get(m, {})) for m in suite.metrics]
    for metric in metrics:  # missing weights or bad settings fail before any image is made
        metric.check()
    # the model's own settings (a one-step SFD erasure: 1 step, guidance 1, rows' guidance ignored),
    # under what the caller asked for
    sampling = {**ref.sampling, **(sampling or {})}
    items = plan(rows, suite.images_per_prompt, seed, sampling, row_guidance=not ref.one_step)
    cache_dir = Path(cache_root) / ref.cache_key
    if make is None and any(not (cache_dir / f"{it['key']}.png").exists() for it in items):
        from ..pipelines import load_pipeline
        make = pipeline_generate(load_pipeline(ref, device=device))
    stats = (generate_cached(make, items, cache_dir, batch_size, split) if make
             else {"generated": 0, "cached": len(items)})
    if split and not distributed.is_main():
        return None, None, rows
    images = torch.stack([load_image(cache_dir / f"{it['key']}.png") for it in items])
    prompts = [it["prompt"] for it in items]
    expected = [rows[it["row"]].expected for it in items]
    results = {"erasure_version": __version__, "model": str(ref), "suite": suite.name,
               "suite_description": suite.description, "images_per_prompt": suite.images_per_prompt,
               "n_prompts": len(rows), "seed": seed, "sampling": sampling, "generation": stats, "metrics": {}}
    if ref.is_erasure:
        results["erasure_manifest"] = ref.manifest
    for metric in metrics:
        out = metric.compute(images, prompts, expected)
        out["settings"] = {k: str(v) for k, v in metric.settings.items()}
        results["metrics"][metric.name] = out
    results["summary"] = {k: v for out in results["metrics"].values() for k, v in out["summary"].items()
                          if isinstance(v, (int, float, str)) or v is None}
    results["per_prompt"] = per_prompt(results, rows, items)
    # each image's file, relative to cache_root, in the order of `images` (row by row)
    results["image_files"] = [f"{ref.cache_key}/{it['key']}.png" for it in items]
    return results, images, rows


def per_prompt(results: dict, rows: list[Row], items: list[dict]) -> list[dict]:
    """Per row: the prompt and, for per-image metric outputs, the mean of each numeric field
    (booleans count as 0/1) and, for the MiniSD judge, accuracy per attribute."""
    out = [{"prompt": r.prompt, "group": r.group, "n_images": 0} for r in rows]
    for it in items:
        out[it["row"]]["n_images"] += 1
    mini = results["metrics"].get("mini_classifier")
    if mini:
        for entry, row in zip(out, rows):
            entry.update({f"{a}_acc": None for a in LABELS})
        hits: dict[tuple[int, str], list[bool]] = {}
        for it, pred in zip(items, mini["per_image"]):
            for attr, value in rows[it["row"]].expected.items():
                hits.setdefault((it["row"], attr), []).append(pred[attr] == value)
        for (i, attr), h in hits.items():
            out[i][f"{attr}_acc"] = sum(h) / len(h)
    for name, metric in results["metrics"].items():
        if name == "mini_classifier" or not metric.get("per_image"):
            continue
        sums: dict[tuple[int, str], list[float]] = {}
        for it, image in zip(items, metric["per_image"]):
            for key, value in image.items():
                if isinstance(value, (bool, int, float)):
                    sums.setdefault((it["row"], key), []).append(float(value))
        for (i, key), values in sums.items():
            out[i][key] = sum(values) / len(values)
    return out
