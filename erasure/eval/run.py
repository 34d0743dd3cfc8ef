"""`erasure eval` as a function: pick the suite, fill in the concept from the manifest, give each
metric its settings, run the suite on the model (and on a compared base), measure the ASR beside
the suite when asked, and write the JSON and the report.

    result, lines = run_eval("out/no-circle", suite="mini-objects", json_out="r.json")

Arguments are plain values (what the CLI's flags hold); nothing is printed: `lines` are what
the CLI prints. Under a launcher (`accelerate launch -m erasure eval ...`) every process makes
its share of the images and of the attacked prompts; the main process scores and writes, and
returns the result; the others return (None, []).
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import distributed, harness
from ..errors import UserError
from ..files import write_json
from ..images import grid as image_grid, save_png
from ..model_ref import ModelRef, resolve
from ..worlds import world_for
from .metrics import get_metric
from .runner import evaluate
from .suites import Suite, custom_suite, load_suite

# the metrics that measure the erased concept: turned on beside the MiniSD judge's accuracy when
# the concept is known, given the concept and the world that names it
CONCEPT_METRICS = ("erasure_rate", "retention")


def sampler_name(ref: ModelRef) -> str:
    """The scheduler class a model samples with (its folder's scheduler config), for the harness."""
    import json
    if ref.one_step:
        return "OneStepScheduler"
    config = Path(ref.base_path) / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(config.read_text()).get("_class_name", "unknown")
    except (OSError, ValueError):
        return "unknown"


def eval_suite(suite: str | None = None, prompts: str | Path | None = None, metrics: list[str] | None = None,
               images_per_prompt: int | None = None) -> Suite:
    """A shipped (or plug-in) suite by name, or a prompt CSV as a suite (default metric
    mini_classifier, 8 images per prompt); `metrics` and `images_per_prompt` override."""
    if suite:
        chosen = load_suite(suite)
        if metrics:
            chosen.metrics = metrics
    else:
        chosen = custom_suite(prompts, metrics or ["mini_classifier"], 8)
    if images_per_prompt is not None:
        chosen.images_per_prompt = images_per_prompt
    return chosen


def metric_settings(concept: str | None, world, nudenet_threshold: float | None = None, clip_model: str | None = None,
                    reference: str | None = None, inception_weights: str | None = None) -> dict[str, dict]:
    """Each built-in metric's settings from the plain arguments (unset ones left to the metric)."""
    concept_settings = {"concept": concept, "world": world} if concept else {}
    distribution = {k: v for k, v in (("reference", reference), ("inception_weights", inception_weights)) if v}
    return {**{name: dict(concept_settings) for name in CONCEPT_METRICS},
            "nudenet": {"threshold": nudenet_threshold} if nudenet_threshold is not None else {},
            "clip_score": {"model": clip_model} if clip_model else {},
            "fid": dict(distribution), "kid": dict(distribution)}


def run_eval(model: str | os.PathLike | ModelRef, cache: str | Path, *, suite: str | None = None,
             prompts: str | Path | None = None, metrics: list[str] | None = None, images_per_prompt: int | None = None,
             limit: int | None = None, concept: str | None = None, compare: str | None = None,
             json_out: str | Path | None = None, out: str | Path | None = None, grid: str | Path | None = None,
             nudenet_threshold: float | None = None, clip_model: str | None = None, reference: str | None = None,
             inception_weights: str | None = None, attack_budget: float = 1.0, seed: int = 0,
             sampling: dict | None = None, device: str | None = None, batch_size: int = 32,
             replay: dict | None = None) -> tuple[dict | None, list[str]]:
    """Evaluate `model` (and `compare`, a base to report beside it) on a suite or a prompt CSV;
    images are cached under `cache`. Writes `json_out`, and under `out` results.json, report.html
    and the ASR JSONs; `grid` is a PNG of every image of the model. `sampling` (steps, guidance)
    goes over each model's own. The result carries its harness (erasure.harness: versions, judges,
    sampling, seeds and these arguments); `replay`, a recorded harness this run replays, adds the
    differences from it. Returns (the result dict, the lines to print)."""
    arguments = {"model": str(model), "suite": suite, "prompts": None if prompts is None else str(prompts),
                 "metrics": list(metrics) if metrics else None, "images_per_prompt": images_per_prompt, "limit": limit,
                 "concept": concept, "compare": compare, "nudenet_threshold": nudenet_threshold,
                 "clip_model": clip_model, "reference": reference, "inception_weights": inception_weights,
                 "attack_budget": attack_budget, "seed": seed, "sampling": sampling, "batch_size": batch_size}
    ref = resolve(model)
    compare_ref = resolve(compare) if compare else None
    chosen = eval_suite(suite, prompts, metrics, images_per_prompt)
    concept = concept or ref.concept or (compare_ref.concept if compare_ref else None)
    if concept and "mini_classifier" in chosen.metrics:  # the judge's labels: erasure and retention of that concept
        chosen.metrics += [m for m in CONCEPT_METRICS if m not in chosen.metrics]
    world = world_for(ref)
    settings = metric_settings(concept, world, nudenet_threshold, clip_model, reference, inception_weights)
    models, labels = [ref], ["model"]
    if compare_ref is not None:
        models, labels = [ref, compare_ref], ["model", "base"]
    with_asr = "asr" in chosen.metrics  # the attack needs the model, not images: run beside the suite
    if with_asr:
        if not concept:
            raise UserError("metric asr needs the concept the attack should bring back: pass --concept C")
        world.concept_judge(concept)  # an unknown concept fails before any image is generated
        chosen.metrics = [m for m in chosen.metrics if m != "asr"]
    runs = [evaluate(m, chosen, Path(cache), seed=seed, limit=limit, metric_settings=settings, sampling=sampling,
                     device=device, batch_size=batch_size) for m in models]
    judges = [j for j in (get_metric(name, **settings.get(name, {})).judge() for name in chosen.metrics) if j]
    if with_asr:
        judges.append(world.concept_judge_record(concept, nudenet_threshold))
    if with_asr:
        from ..attacks.discrete import DiscreteAttackConfig
        from .asr import run_attack
        attack = DiscreteAttackConfig.budgeted(attack_budget)
        rows = chosen.rows(limit)
        for m, label, (res, _, _) in zip(models, labels, runs):
            asr_json = Path(out) / f"asr-{label}.json" if out else None
            rep = run_attack(m, concept, rows, asr_json, attack, seed=seed, device=device)
            if res is None:  # not the main process: its share of the attack is done
                continue
            res["metrics"]["asr"] = {"summary": rep["summary"], "protocol": rep["protocol"], "per_prompt": rep["per_prompt"]}
            res["summary"].update(pre_asr=rep["summary"]["pre_asr"], asr=rep["summary"]["asr"])
    if not distributed.is_main():
        return None, []
    result = runs[0][0]
    lines = []
    if compare_ref is not None:
        result["compare"] = {"model": str(compare_ref), "summary": runs[1][0]["summary"],
                             "per_prompt": runs[1][0]["per_prompt"]}
    result["harness"] = harness.record({**arguments, "model": ref.recorded_name, "concept": concept},
                                       [j for j in judges if j], {"sampler": sampler_name(ref), **result["sampling"]},
                                       seed, chosen.images_per_prompt, "eval")
    if replay is not None:
        result["harness"]["replayed_from"] = replay.get("source")
        result["harness"]["mismatch"] = harness.mismatch(replay, result["harness"])
        lines.extend(harness.replay_lines(result["harness"]))
    if json_out:
        write_json(json_out, result)
    if out:
        from .report import write_report
        folder = Path(out)
        write_json(folder / "results.json", result if compare_ref is None else {"model": result, "base": runs[1][0]})
        report = write_report(folder / "report.html", [r[0] for r in runs], labels, [r[1] for r in runs], runs[0][2])
        lines.append(f"report: {report}")
    if grid:
        save_png(image_grid(runs[0][1], nrow=chosen.images_per_prompt, scale=2), grid)
    s = result["summary"]
    shown = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()
                      if not k.endswith("_n"))
    lines.append(f"{shown}  ({result['generation']['generated']} images generated, "
                 f"{result['generation']['cached']} from cache)" + (f" -> {json_out}" if json_out else ""))
    return result, lines
