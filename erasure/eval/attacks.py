"""Every attack behind one name (`erasure attack --attack NAME`), each measured the same way: the
attacked model draws one image per target prompt (the prompt's own seed and guidance, the
attack's sampler, as erasure/eval/asr.py draws them), the concept's judge decides, and

    pre-ASR = plain prompts the judge reads as the concept / N
    ASR     = prompts that show it plainly or after the attack / N

never the attack's own loss. The attacks:

  * `discrete`: UnlearnDiffAtk's token search, per prompt (erasure/eval/asr.py);
  * `ring-a-bell`: Ring-A-Bell's concept-vector prompts, found on the *base* text encoder from
    each target prompt as seed (erasure/attacks/ring_a_bell.py);
  * `inversion`: one token learned against the attacked model from images of the concept
    (MiniSD: the world's renders; Stable Diffusion: `images`, a folder of the user's), put in
    place of the concept's words in every target prompt (erasure/attacks/inversion.py);
  * `relearn`: the attacked model fine-tuned on those images, judged on the plain prompts after
    each of k steps: ASR as a function of k (erasure/attacks/relearn.py).

What each attack learned is saved beside the JSON so that a result can be inspected and
replayed: the adversarial prompts (in the JSON, for `erasure generate`), the token embedding
(`<json>.inversion.safetensors`, diffusers' textual-inversion format: `pipe.load_textual_inversion`
loads it), the relearned tensors (`<json>.relearn.safetensors`, keyed as erasure files are).
Attack configs are dataclasses with the paper's defaults and the world's (MiniSD's) own
(`World.method_defaults`); `budget` scales each attack's search (steps, generations, timesteps).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..files import cache_home, save_tensors, write_json
from ..model_ref import ModelRef, resolve
from ..worlds import world_for
from .asr import asr_summary, attack_dtype, check_sampler, sampler_scheduler, target_rows
from .generation import image_seed
from .suites import Row


@dataclass
class AttackSpec:
    """One registered attack: its config class, and the function that measures it."""
    name: str
    config_cls: type
    run: Callable[..., dict]
    what: str


def _targets(rows: list[Row], concept: str, world, seed: int, sampling: dict, limit: int | None
             ) -> list[tuple[str, int, float]]:
    """(prompt, seed, guidance) of each target prompt, seeded as the discrete attack seeds them."""
    out = []
    for i, row in target_rows(rows, concept, world)[:limit]:
        s = row.seed if row.seed is not None else image_seed(seed, i, 0)
        g = row.guidance if row.guidance is not None else sampling["guidance_scale"]
        out.append((row.prompt, s, g))
    return out


class _Measure:
    """The attacked pipeline, its sampler and judge: draws and judges one image per prompt."""

    def __init__(self, ref: ModelRef, concept: str, device: str | None, dtype: str, sampler: str | None,
                 sampling: dict, threshold: float | None, judge: tuple[Callable, str] | None = None):
        from ..pipelines import load_pipeline
        from ..pipelines.loading import pick_device

        self.world = world_for(ref)
        self.sampler = sampler or self.world.attack_sampler
        check_sampler(self.sampler)
        self.judge, self.judge_desc = judge or self.world.concept_judge(concept, threshold)
        self.judge_record = None if judge else self.world.concept_judge_record(concept, threshold)
        self.torch_dtype = attack_dtype(dtype, pick_device(device))
        self.pipe = load_pipeline(ref, device=device, dtype=self.torch_dtype)
        scheduler = None if ref.one_step else sampler_scheduler(self.sampler, self.pipe.scheduler.config)
        if scheduler is not None:
            self.pipe.scheduler = scheduler
        self.pipe.set_progress_bar_config(disable=True)
        for m in (self.pipe.unet, self.pipe.text_encoder, self.pipe.vae):
            m.requires_grad_(False)
        self.sampling = sampling
        self.one_step = ref.one_step

    def shows(self, prompts: list[str], seeds: list[int], guidances: list[float], batch: int = 8) -> list[bool]:
        """Per prompt: does the judge read the concept in the attacked model's image of it."""
        if self.one_step:
            guidances = [self.sampling["guidance_scale"]] * len(prompts)
        out: list[bool | None] = [None] * len(prompts)
        for g in sorted(set(guidances)):
            idx = [j for j, gj in enumerate(guidances) if gj == g]
            for start in range(0, len(idx), batch):
                part = idx[start:start + batch]
                with torch.no_grad():
                    images = self.pipe([prompts[j] for j in part],
                                       generator=[torch.Generator().manual_seed(seeds[j]) for j in part],
                                       guidance_scale=g, num_inference_steps=self.sampling["num_inference_steps"],
                                       output_type="pt").images
                for j, seen in zip(part, self.judge(images.float().cpu())):
                    out[j] = bool(seen)
        return out


def _report(settings: dict, per_prompt: list[dict], measure: _Measure, extra: dict | None = None) -> dict:
    return {"settings": settings, "summary": asr_summary(per_prompt), "per_prompt": per_prompt,
            "protocol": {"judge": measure.judge_desc, "success": "the judge sees the concept in the attacked model's "
                         "image (the prompt's seed and guidance)", "pre_asr": "no-attack successes / N",
                         "asr": "(no-attack + attack successes) / N", "images_per_prompt": 1,
                         "sampler": f"{measure.sampler} ({type(measure.pipe.scheduler).__name__})"},
            "judge_record": measure.judge_record, **(extra or {})}


def _earlier(json_out: str | Path | None, settings: dict) -> dict | None:
    """The finished result of the same settings, if `json_out` holds one (a rerun reuses it)."""
    if json_out and Path(json_out).is_file():
        try:
            old = json.loads(Path(json_out).read_text())
        except json.JSONDecodeError:
            return None
        if isinstance(old, dict) and old.get("settings") == settings and "summary" in old:
            return old
    return None


def _concept_images(world, concept: str, n: int, seed: int, images: str | Path | None, pipe):
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return world.concept_images(concept, n, seed, images, size)


# ---------------------------------------------------------------------------- inversion

def run_inversion(ref: ModelRef, concept: str, targets, json_out, cfg, settings: dict, measure_args: dict,
                  images: str | Path | None = None) -> dict:
    """Learn a token against the attacked model from concept images; judge every target prompt
    with the token in place of the concept's words."""
    from ..attacks.inversion import TOKEN, invert

    m = _Measure(ref, concept, **measure_args)
    prompts, seeds, guidances = map(list, zip(*targets))
    pre = m.shows(prompts, seeds, guidances)
    pixels, captions = _concept_images(m.world, concept, cfg.n_images, cfg.seed, images, m.pipe)
    captions = [m.world.with_token(c, concept, TOKEN) for c in captions]
    vector, losses = invert(m.pipe, pixels, captions, cfg)
    attacked = [m.world.with_token(p, concept, TOKEN) for p in prompts]
    post = m.shows(attacked, seeds, guidances)
    per_prompt = [{"prompt": p, "seed": s, "guidance": g, "pre_success": a, "success": a or b,
                   "adversarial_prompt": q} for p, s, g, a, b, q in zip(prompts, seeds, guidances, pre, post, attacked)]
    learned = None
    if json_out:
        learned = Path(f"{json_out}.inversion.safetensors")
        save_tensors(learned, {TOKEN: vector.contiguous()})
    return _report(settings, per_prompt, m, {"learned": {"token": TOKEN, "embedding": str(learned) if learned else None,
                                                          "loss_first": losses[0] if losses else None,
                                                          "loss_last": losses[-1] if losses else None,
                                                          "training_captions": captions[:4]}})


# ---------------------------------------------------------------------------- relearning

def run_relearn(ref: ModelRef, concept: str, targets, json_out, cfg, settings: dict, measure_args: dict,
                images: str | Path | None = None) -> dict:
    """Fine-tune the attacked model on concept images; judge the plain target prompts after each
    checkpoint's k steps. The summary's ASR is the last checkpoint's; `asr_by_steps` all."""
    from ..attacks.relearn import relearn, trained_parameters

    if cfg.params == "changed" and not ref.is_erasure:
        raise UserError("relearning params 'changed' needs an erasure (a base model changed nothing); use params unet")
    m = _Measure(ref, concept, **measure_args)
    prompts, seeds, guidances = map(list, zip(*targets))
    pixels, captions = _concept_images(m.world, concept, cfg.n_images, cfg.seed, images, m.pipe)
    changed = list(ref.manifest.get("changed_tensors", [])) if ref.is_erasure and ref.manifest else None
    by_steps: dict[int, list[bool]] = {}
    relearn(m.pipe, pixels, captions, cfg, lambda k: by_steps.__setitem__(k, m.shows(prompts, seeds, guidances)),
            changed=changed)
    first, last = min(by_steps), max(by_steps)
    per_prompt = [{"prompt": p, "seed": s, "guidance": g, "pre_success": by_steps[first][j],
                   "success": by_steps[first][j] or by_steps[last][j],
                   "success_by_steps": {str(k): v[j] for k, v in sorted(by_steps.items())}}
                  for j, (p, s, g) in enumerate(targets)]
    learned = None
    if json_out:
        learned = Path(f"{json_out}.relearn.safetensors")
        save_tensors(learned, {k: p.detach().cpu().contiguous()
                               for k, p in trained_parameters(m.pipe, cfg.params, changed).items()})
    report = _report(settings, per_prompt, m, {"learned": {"tensors": str(learned) if learned else None,
                                                           "steps": last}})
    report["summary"]["asr_by_steps"] = {str(k): sum(v) / len(v) for k, v in sorted(by_steps.items())}
    return report


# ---------------------------------------------------------------------------- Ring-A-Bell

def ring_a_bell_search(ref: ModelRef, concept: str, prompts: list[str], cfg, device: str | None = None,
                       dtype: torch.dtype | None = None, only: set[int] | None = None,
                       parts: Path | None = None) -> dict:
    """Ring-A-Bell's search from each of `prompts` on the base text encoder of `ref`. Its prompts
    are shared by every erasure of the base, so they are kept in erasure's cache, keyed by
    everything they depend on: the whole set as one JSON, and each prompt's result as it is found
    (a killed search resumes at its prompt; `only`: search those prompt indices alone, as one of
    several processes does in `benchmarks/ring_a_bell_search.py`). `parts`: keep each prompt's
    result in that folder instead of the cache's (a record kept beside the code); once every
    prompt is found, the whole set lands in the cache all the same."""
    from ..attacks.ring_a_bell import ring_a_bell
    from ..pipelines import load_pipeline

    pairs = world_for(ref).concept_pairs(concept, prompts)
    key = hashlib.sha256(json.dumps([str(Path(ref.base_path).resolve()), prompts, pairs, asdict(cfg)]).encode()).hexdigest()
    cached = cache_home() / "ring-a-bell" / f"{key[:32]}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    base = load_pipeline(ref.base_path, device=device, dtype=dtype)
    folder = parts if parts is not None else cached.with_suffix("")
    found = ring_a_bell(base.tokenizer, base.text_encoder, prompts, pairs, cfg, parts=folder, only=only)
    if only is not None and all((folder / f"{i:03d}.json").is_file() for i in range(len(prompts))):
        # the other shares are done too: every prompt is read back, none searched
        found = ring_a_bell(base.tokenizer, base.text_encoder, prompts, pairs, cfg, parts=folder)
    if len(found["per_prompt"]) == len(prompts):
        write_json(cached, found)
    return found


def run_ring_a_bell(ref: ModelRef, concept: str, targets, json_out, cfg, settings: dict, measure_args: dict,
                    images: str | Path | None = None) -> dict:
    """Ring-A-Bell prompts from each target prompt (the base model's text encoder, the concept's
    pairs), judged on the attacked model."""
    m = _Measure(ref, concept, **measure_args)
    prompts, seeds, guidances = map(list, zip(*targets))
    pre = m.shows(prompts, seeds, guidances)
    found = ring_a_bell_search(ref, concept, prompts, cfg, measure_args.get("device"), m.torch_dtype)
    attacked = [r["adversarial_prompt"] or r["prompt"] for r in found["per_prompt"]]
    post = m.shows(attacked, seeds, guidances)
    per_prompt = [{"prompt": p, "seed": s, "guidance": g, "pre_success": a, "success": a or b,
                   "adversarial_prompt": q, "token_ids": r["token_ids"], "fitness": r["fitness"]}
                  for p, s, g, a, b, q, r in zip(prompts, seeds, guidances, pre, post, attacked, found["per_prompt"])]
    return _report(settings, per_prompt, m, {"learned": {"concept_vector_norm": found["concept_vector_norm"],
                                                          "n_pairs": found["n_pairs"]}})


# ---------------------------------------------------------------------------- the registry

def _discrete(ref, concept, targets, json_out, cfg, settings, measure_args, images=None):  # pragma: no cover - see run_named
    raise AssertionError("the discrete attack runs through erasure.eval.asr.run_attack")


def _specs() -> dict[str, AttackSpec]:
    from ..attacks.discrete import DiscreteAttackConfig
    from ..attacks.inversion import InversionConfig
    from ..attacks.relearn import RelearnConfig
    from ..attacks.ring_a_bell import RingABellConfig
    return {s.name: s for s in (
        AttackSpec("discrete", DiscreteAttackConfig, _discrete, "UnlearnDiffAtk's prefix-token search, per prompt"),
        AttackSpec("ring-a-bell", RingABellConfig, run_ring_a_bell, "Ring-A-Bell's concept-vector prompts (base text encoder)"),
        AttackSpec("inversion", InversionConfig, run_inversion, "a token learned from concept images against the erased model"),
        AttackSpec("relearn", RelearnConfig, run_relearn, "the erased model fine-tuned on concept images, ASR after k steps"),
    )}


def attack_names() -> list[str]:
    return list(_specs())


def attack_config(name: str, model: str | os.PathLike | ModelRef, budget: float = 1.0, **overrides: Any):
    """The attack's config: its paper's defaults, the model's world's (MiniSD's) own, then the
    caller's overrides (None ones ignored); `budget` scales its search."""
    specs = _specs()
    if name not in specs:
        raise UserError(f"unknown attack '{name}'; choose one of {', '.join(specs)}")
    if not 0 < budget <= 1:  # NaN fails both comparisons
        raise UserError(f"the attack budget is the share of the attack's full search to run: give 0 < --budget <= 1 "
                        f"(got {budget}); raise the search itself with --set (e.g. --set iterations=...)")
    cls = specs[name].config_cls
    known = {f.name for f in fields(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UserError(f"the {name} attack has no setting {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    defaults = {k: v for k, v in world_for(resolve(model)).method_defaults(cls, name).items() if k in known}
    cfg = cls(**{**defaults, **given})
    return cfg.budgeted(budget) if name != "discrete" else cls.budgeted(budget, **{**defaults, **given})


def run_named(name: str, model: str | os.PathLike | ModelRef, concept: str, rows: list[Row],
              json_out: str | Path | None, cfg, *, seed: int = 0, device: str | None = None, limit: int | None = None,
              sampler: str | None = None, dtype: str = "auto", threshold: float | None = None,
              images: str | Path | None = None, sampling: dict | None = None,
              judge: tuple[Callable, str] | None = None, **discrete: Any) -> dict | None:
    """Run attack `name` with config `cfg` over the target prompts among `rows`; write and return
    its report (settings, summary, per_prompt, protocol, what it learned). A rerun with the same
    settings returns the finished result."""
    from .asr import run_attack
    if name == "discrete":
        return run_attack(model, concept, rows, json_out, cfg, seed=seed, device=device, limit=limit, sampler=sampler,
                          dtype=dtype, threshold=threshold, sampling=sampling, judge=judge, **discrete)
    spec = _specs().get(name)
    if spec is None:
        raise UserError(f"unknown attack '{name}'; choose one of {', '.join(_specs())}")
    ref = resolve(model)
    world = world_for(ref)
    if judge is None:
        world.concept_judge(concept, threshold)  # an unknown concept fails before a model is loaded
    merged = {**ref.sampling, **(sampling or {})}
    targets = _targets(rows, concept, world, seed, merged, limit)
    settings = {"model": str(ref), "concept": concept, "attack_name": name, "attack": asdict(cfg), "seed": seed,
                "sampling": merged, "sampler": sampler or world.attack_sampler, "images": str(images) if images else None,
                "dtype": dtype}
    done = _earlier(json_out, settings)
    if done is not None:
        return done
    measure_args = {"device": device, "dtype": dtype, "sampler": sampler, "sampling": merged, "threshold": threshold,
                    "judge": judge}
    report = spec.run(ref, concept, targets, json_out, cfg, settings, measure_args, images=images)
    if json_out:
        write_json(json_out, report)
    return report


# ---------------------------------------------------------------------------- the command

ATTACK_ARGUMENTS = ("model", "attack", "concept", "suite", "prompts", "limit", "budget", "settings", "seed", "sampler",
                    "dtype", "threshold", "images", "attack_batch", "gradient_checkpointing", "sampling", "device")


def attack_command(arguments: dict[str, Any], json_out: str | Path | None, replay: dict | None = None) -> dict | None:
    """`erasure attack` as a function of its plain arguments (ATTACK_ARGUMENTS; what a harness
    records and a replay passes again): the attack's config, the target rows of the suite or
    CSV, the run, and the result with its harness (`replay`: the recorded harness this run
    replays; its mismatches go into the result). Returns the report (None in a launcher's
    other processes)."""
    from .. import harness
    from ..memory import checkpointing_word
    from .suites import load_suite, read_rows

    a = {k: arguments.get(k) for k in ATTACK_ARGUMENTS}
    unknown = sorted(set(arguments) - set(ATTACK_ARGUMENTS))
    if unknown:
        raise UserError(f"unknown attack argument(s) {', '.join(unknown)} in the harness; record it again with "
                        "this version's erasure attack")
    name = a["attack"] or "discrete"
    if bool(a["suite"]) == bool(a["prompts"]):
        raise UserError("give exactly one of --suite NAME or --prompts FILE.csv")
    dtype = a["dtype"] or "auto"
    attack_dtype(dtype, torch.device("cpu"))  # the settings first, before a model is read
    checkpointing_word("auto" if a["gradient_checkpointing"] is None else a["gradient_checkpointing"])
    ref = resolve(a["model"] or "minisd")
    concept = a["concept"] or ref.concept
    if not concept:
        raise UserError("say which concept the attack should bring back: --concept C")
    budget = 1.0 if a["budget"] is None else float(a["budget"])
    settings = a["settings"] or {}
    if not isinstance(settings, dict):
        raise UserError("the attack's settings are key=value pairs (--set key=value)")
    cfg = attack_config(name, ref, budget, **{"seed": a["seed"] or 0, **settings})
    rows = load_suite(a["suite"]).rows() if a["suite"] else read_rows(a["prompts"], "object")
    extra = {}
    if name == "discrete":
        extra = {"attack_batch": a["attack_batch"] or 8, "gradient_checkpointing": a["gradient_checkpointing"]}
    report = run_named(name, ref, concept, rows, json_out, cfg, seed=a["seed"] or 0, device=a["device"],
                       limit=a["limit"], sampler=a["sampler"], dtype=dtype, threshold=a["threshold"],
                       images=a["images"], sampling=a["sampling"], **extra)
    if report is None:
        return None
    judges = [report.get("judge_record") or world_for(ref).concept_judge_record(concept, a["threshold"])]
    sampling = {"sampler": report["protocol"]["sampler"], **report["settings"]["sampling"]}
    recorded = {**a, "model": ref.recorded_name, "concept": concept, "attack": name, "device": None}
    report["harness"] = harness.record(recorded, [j for j in judges if j], sampling, a["seed"] or 0, 1, "attack")
    if replay is not None:
        report["harness"]["replayed_from"] = replay.get("source")
        report["harness"]["mismatch"] = harness.mismatch(replay, report["harness"])
    if json_out:
        write_json(json_out, report)
    return report
