"""The `erasure` command line: generate, eval, train, export, attack, bench, demo, ls.

Every mistake a user can fix ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import UserError


# limits that keep one bad number from allocating for hours: images in one generate call, guidance
MAX_IMAGES_PER_CALL = 256
MAX_GUIDANCE = 100.0
# sampling steps: the schedulers are trained on 1000 timesteps and DDIM's "leading" spacing with
# SD's steps_offset runs past the last one at 1000 steps; past a few hundred no image improves
MAX_SAMPLING_STEPS = 500


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise UserError(f"--{name} must be at least 1 (got {value})")
    return value


def _sampling_flags(args) -> dict:
    """What --steps / --guidance ask for (nothing when unset)."""
    sampling = {}
    if args.steps is not None:
        sampling["num_inference_steps"] = _positive("steps", args.steps)
        if args.steps > MAX_SAMPLING_STEPS:
            raise UserError(f"--steps is at most {MAX_SAMPLING_STEPS} (got {args.steps}); Stable Diffusion samples in 50")
    if args.guidance is not None:
        if not math.isfinite(args.guidance) or not 0 <= args.guidance <= MAX_GUIDANCE:
            raise UserError(f"--guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {args.guidance}); "
                            "Stable Diffusion samples at 7.5")
        sampling["guidance_scale"] = args.guidance
    return sampling


def _sampling(args, model) -> dict:
    from .model_ref import model_sampling
    return {**model_sampling(model), **_sampling_flags(args)}  # a one-step erasure (SFD): 1 step, guidance 1


def cmd_generate(args) -> int:
    from .eval.generation import generate
    from .images import grid, save_png
    from .model_ref import resolve
    from .outdir import check_writable
    from .pipelines import load_pipeline
    from .prompt_files import check_prompt_text

    _positive("num-images", args.num_images)
    if args.num_images > MAX_IMAGES_PER_CALL:
        raise UserError(f"--num-images is at most {MAX_IMAGES_PER_CALL} per call (got {args.num_images}); run several "
                        "calls with different --seed, or erasure eval for many images")
    check_prompt_text(args.prompt, "--prompt")
    check_writable(args.out)
    model = resolve(args.model)
    pipe = load_pipeline(model, device=args.device)
    images = generate(pipe, [args.prompt], args.num_images, args.seed, _sampling(args, model), desc="generate")
    out = Path(args.out)
    for i, image in enumerate(images):
        save_png(image, out / f"{i:03d}.png")
    save_png(grid(images, nrow=min(8, len(images)), scale=2 if images.shape[-1] <= 128 else 1), out / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {out}")
    return 0


def _cache_root(args) -> Path:
    from .files import cache_home
    if args.cache:
        return Path(args.cache)
    if args.out:
        return Path(args.out) / "cache"
    return cache_home() / "images"


def cmd_eval(args) -> int:
    from . import harness
    from .eval.run import run_eval

    if not (args.json or args.out):
        raise UserError("say where results go: --json OUT.json and/or --out REPORT_DIR")
    device = None if args.device == "auto" else args.device
    if args.harness:  # every setting from the recorded harness; the model too unless --model is given
        replay = {**harness.read(args.harness, "eval"), "source": str(args.harness)}
        arguments = dict(replay["arguments"])
        if args.model is not None:
            arguments["model"] = args.model
        if args.compare is not None:
            arguments["compare"] = args.compare
        try:
            _, lines = run_eval(arguments.pop("model"), _cache_root(args), **arguments, json_out=args.json,
                                out=args.out, grid=args.grid, device=device, replay=replay)
        except TypeError as e:
            raise UserError(f"{args.harness}: its harness does not fit this version's erasure eval ({e}); "
                            "record it again") from None
        for line in lines:
            print(line)
        return 0
    if bool(args.suite) == bool(args.prompts):
        raise UserError("give exactly one of --suite NAME or --prompts FILE.csv (erasure eval --help lists the suites)")
    if args.images_per_prompt is not None:
        _positive("images-per-prompt", args.images_per_prompt)
    if args.limit is not None:
        _positive("limit", args.limit)
    _, lines = run_eval(args.model or "minisd", _cache_root(args), suite=args.suite, prompts=args.prompts,
                        metrics=[m.strip() for m in args.metrics.split(",")] if args.metrics else None,
                        images_per_prompt=args.images_per_prompt, limit=args.limit, concept=args.concept,
                        compare=args.compare, json_out=args.json, out=args.out, grid=args.grid,
                        nudenet_threshold=args.nudenet_threshold, clip_model=args.clip_model,
                        reference=args.reference, inception_weights=args.inception_weights,
                        attack_budget=args.attack_budget, seed=args.seed,
                        sampling=_sampling_flags(args),  # under each model's own
                        device=device, batch_size=_positive("batch-size", args.batch_size))
    for line in lines:
        print(line)
    return 0


TRAIN_OWN_FLAGS = ("method", "model", "out", "config", "resume", "grid")


def _method_in(argv: list[str]) -> str:
    """The method an `erasure train` command line asks for (--method, else its --config YAML's,
    else esd-x): whose settings `--help` shows."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    method = known.method
    if method is None and known.config:
        try:
            import yaml
            method = (yaml.safe_load(Path(known.config).read_text()) or {}).get("method")
        except Exception:  # noqa: BLE001 (a bad YAML is reported when the command runs)
            method = None
    return str(method or "esd-x")


def _config_flags(parser: argparse.ArgumentParser, shown_method: str = "esd-x") -> None:
    """One flag per config field over every registered method, default SUPPRESS so that only
    what the user typed overrides the yaml and the defaults. `--help` shows the settings every
    method shares and those of `shown_method`, each once, with that method's defaults (and its
    MiniSD default where it differs); the others' flags parse (to give a one-line error naming
    the method they belong to) but stay hidden."""
    import dataclasses

    from .config import EraseConfig, field_types
    from .registry import get_method, method_names

    try:
        spec = get_method(shown_method)
        paper, mini = spec.default_config(), spec.default_config("minisd")
        shown = {f.name for f in dataclasses.fields(spec.config_cls)}
    except UserError:  # an unknown --method is reported when the command runs
        spec, paper, mini, shown = None, None, None, set()
    shared = parser.add_argument_group("settings of every method")
    own = parser.add_argument_group(f"{spec.name} settings" if spec else "method settings")
    base_fields = {f.name for f in dataclasses.fields(EraseConfig)}
    seen: set[str] = set()
    for name in ([spec.name] if spec else []) + method_names():  # the shown method's own help texts first
        cls = get_method(name).config_cls
        for f in dataclasses.fields(cls):
            if f.name in seen or f.name in ("method", "base_model"):
                continue
            seen.add(f.name)
            kind = field_types(cls)[f.name]
            if f.name in shown:
                default = getattr(paper, f.name)
                text = f"default: {default}" + ("" if getattr(mini, f.name) == default else
                                                f"; MiniSD: {getattr(mini, f.name)}")
                help_text = f"{f.metadata.get('help', '')} ({text})".replace("%", "%%")
            else:
                help_text = argparse.SUPPRESS
            group = shared if f.name in base_fields else own
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind if kind in (int, float, str) else str,
                               default=argparse.SUPPRESS, help=help_text)


def _train_config(args) -> "EraseConfig":  # noqa: F821
    import dataclasses

    import yaml

    from .config import EraseConfig
    from .registry import get_method

    from_yaml: dict = {}
    if args.config:
        try:
            from_yaml = yaml.safe_load(Path(args.config).read_text()) or {}
        except FileNotFoundError:
            raise UserError(f"no config file at {args.config}") from None
        except yaml.YAMLError as e:
            raise UserError(f"{args.config} is not valid YAML ({str(e).splitlines()[0]})") from None
        except (UnicodeDecodeError, IsADirectoryError):
            raise UserError(f"{args.config} is not a YAML text file; pass a config such as method: esd-x") from None
        if not isinstance(from_yaml, dict):
            raise UserError(f"{args.config} holds a YAML {type(from_yaml).__name__}, not a mapping of settings "
                            "(e.g. method: esd-x, steps: 200)")
        from_yaml = {str(k).replace("-", "_"): v for k, v in from_yaml.items()}
    method = args.method or from_yaml.get("method") or "esd-x"
    if not isinstance(method, str):
        raise UserError(f"setting 'method' must be a method name such as esd-x (got {method!r}); see erasure ls")
    spec = get_method(method)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    typed = {k: v for k, v in vars(args).items() if k not in TRAIN_OWN_FLAGS and k not in ("command", "func")}
    foreign = sorted(set(typed) - fields)
    if foreign:
        raise UserError(f"--{foreign[0].replace('_', '-')} is not a setting of method {spec.name}; "
                        f"see erasure train --method {spec.name} --help")
    model = args.model or from_yaml.get("base_model") or "minisd"
    return EraseConfig.from_dict({**from_yaml, **typed, "method": spec.name, "base_model": model})


def _check_concept_known(config) -> None:
    """Every concept of the run is one the base model's world can erase (a one-line error if not)."""
    from .worlds import world_for

    world = world_for(config.base_model)
    for concept in config.concepts:
        world.check_concept(concept)


def cmd_train(args) -> int:
    from . import distributed
    from .erasure_files import CONFIG_NAME
    from .outdir import check_out, hold_out
    from .registry import get_method

    config = _train_config(args)
    _check_concept_known(config)

    out = Path(args.out)
    if not args.resume and (out / CONFIG_NAME).exists():
        raise UserError(f"{out} already holds an erasure; choose a new --out or delete it")
    if not distributed.is_main():  # data parallel: the main process checks and holds the folder
        get_method(config.method).trainer_cls(config).train(out, resume=args.resume)
        return 0
    check_out(out)
    with hold_out(out):
        trainer = get_method(config.method).trainer_cls(config)
        trainer.train(out, resume=args.resume)
        return _after_training(trainer, out, config, args)


def _after_training(trainer, out: Path, config, args) -> int:
    from .erasure_files import CONFIG_NAME, WEIGHTS_NAME
    from .eval.before_after import release, write_comparison

    device = release(trainer)
    grid_path = write_comparison(out, config, device) if args.grid else "not drawn (--no-grid)"
    print(f"erasure written to {out}/ ({CONFIG_NAME}, {WEIGHTS_NAME})\n"
          f"before/after grid: {grid_path}\n"
          f"use it: ErasedPipeline.from_pretrained('{out}')  or  erasure generate --model {out} --prompt ...")
    return 0


def _export(erasure_dir: str, out_dir: str, part, extra_json: dict[str, dict] | None = None) -> Path:
    """Write `part(pipeline)` (a diffusers model or pipeline) with save_pretrained into an empty
    `out_dir`, plus `extra_json` ({file name: content}), through a temp folder renamed at the end
    (nothing half-written under the name)."""
    import shutil
    import tempfile

    from .files import current_umask, write_json
    from .pipelines import ErasedPipeline

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose a new --out")
    pipe = ErasedPipeline.from_pretrained(erasure_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a temp folder of our own (unique), so nothing else beside --out is ever touched
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp-export", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; the export gets the mode a new folder would
        part(pipe).save_pretrained(tmp, safe_serialization=True)
        for name, content in (extra_json or {}).items():
            write_json(tmp / name, content)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _erasure_ref(erasure_dir: str):
    """The erasure folder `erasure export` is given, resolved once (a base model is an error)."""
    from .erasure_files import is_erasure_dir, read_manifest
    from .model_ref import resolve

    if not is_erasure_dir(erasure_dir):
        read_manifest(erasure_dir)  # the manifest's one-line error: not an erasure folder
    return resolve(erasure_dir)


def cmd_export(args) -> int:
    from .model_ref import ONE_STEP_SAMPLING, SAMPLING_FILE

    if args.format in ("lora", "kohya"):
        from .lora import export_lora
        if args.rank is None:
            raise UserError(f"--format {args.format} needs --rank R (e.g. --rank 16)")
        result = export_lora(args.erasure_dir, args.out, args.rank, "diffusers" if args.format == "lora" else "kohya",
                             args.dtype)
        for line in result.lines():
            print(line)
        return 0
    if args.rank is not None or args.dtype is not None:
        raise UserError("--rank and --dtype apply to a LoRA export; add --format lora or --format kohya")

    one_step = _erasure_ref(args.erasure_dir).one_step
    # a one-step generator (SFD): its scheduler is erasure's OneStepScheduler, and the folder says
    # how to sample it, so that erasure generate/eval on the export use 1 step, guidance 1
    extra = {SAMPLING_FILE: ONE_STEP_SAMPLING} if one_step else None
    out = _export(args.erasure_dir, args.out, lambda pipe: pipe.to_standard(), extra)
    if one_step:
        print(f"wrote a complete one-step Stable Diffusion folder to {out}: import erasure.pipelines, then "
              "StableDiffusionPipeline.from_pretrained(...) loads it (scheduler: erasure's OneStepScheduler); "
              "sample with num_inference_steps=1, guidance_scale=1.0")
    else:
        print(f"wrote a complete Stable Diffusion folder to {out} (loads with StableDiffusionPipeline.from_pretrained)")
    return 0


def cmd_import(args) -> int:
    from .importing import import_erasure
    result = import_erasure(args.source, args.base, args.out, concept=args.concept, allow_pickle=args.allow_pickle,
                            dtype=args.dtype)
    for line in result.lines():
        print(line)
    return 0


def cmd_export_text_encoder(args) -> int:
    manifest = _erasure_ref(args.erasure_dir).manifest
    if not any(k.startswith("text_encoder.") for k in manifest["changed_tensors"]):
        raise UserError(f"{args.erasure_dir} changes no text-encoder weight (method {manifest['method']}); "
                        "use erasure export for a full pipeline folder")
    out = _export(args.erasure_dir, args.out, lambda pipe: pipe.text_encoder)
    print(f"wrote a CLIPTextModel folder to {out}: StableDiffusionPipeline.from_pretrained(BASE, "
          f"text_encoder=CLIPTextModel.from_pretrained('{out}'))")
    return 0


def _set_pairs(pairs: list[str] | None) -> dict:
    """--set key=value (repeatable; a comma list becomes a list; numbers and true/false are read as such)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got '{pair}' (e.g. --set steps=300)")

        def read(v: str):
            try:
                return json.loads(v)
            except ValueError:
                return v
        out[key.strip().replace("-", "_")] = [read(v) for v in value.split(",")] if "," in value else read(value)
    return out


def cmd_attack(args) -> int:
    from . import harness
    from .eval.attacks import attack_command

    replay = None
    if args.harness:
        replay = {**harness.read(args.harness, "attack"), "source": str(args.harness)}
        arguments = dict(replay["arguments"])
        if args.model is not None:  # the recorded harness on another model
            arguments["model"] = args.model
        arguments["device"] = None if args.device == "auto" else args.device
    else:
        if args.limit is not None:
            _positive("limit", args.limit)
        settings = _set_pairs(args.set)
        for flag, key in (("n_tokens", "n_tokens"), ("timesteps", "timesteps"), ("iterations", "iterations"),
                          ("lr", "lr")):
            if getattr(args, flag) is not None:
                settings[key] = getattr(args, flag)
        if "n_tokens" in settings:
            _positive("n-tokens", settings["n_tokens"])
        arguments = {"model": args.model or "minisd", "attack": args.attack, "concept": args.concept,
                     "suite": args.suite, "prompts": args.prompts, "limit": args.limit, "budget": args.budget,
                     "settings": settings, "seed": args.seed, "sampler": args.sampler, "dtype": args.dtype,
                     "threshold": args.nudenet_threshold, "images": args.images,
                     "attack_batch": _positive("attack-batch", args.attack_batch),
                     "gradient_checkpointing": args.gradient_checkpointing, "sampling": None,
                     "device": None if args.device == "auto" else args.device}
    report = attack_command(arguments, args.json, replay)
    if report is None:  # a launcher's other process: the main one reports
        return 0
    s = report["summary"]
    by_steps = s.get("asr_by_steps")
    extra = ("  ASR after k steps: " + ", ".join(f"k={k} {v:.3f}" for k, v in by_steps.items())) if by_steps else ""
    print(f"{arguments['attack'] or 'discrete'}: pre-ASR {s['pre_asr']:.3f}  ASR {s['asr']:.3f}  over "
          f"{s['n_prompts']} prompts ({report['protocol']['judge']}){extra} -> {args.json}")
    if replay is not None:
        for line in harness.replay_lines(report["harness"]):
            print(line)
    return 0


def _key_values(flag: str, text: str | None, allowed: dict | None = None) -> dict:
    """'a=1,b=x' -> {"a": 1, "b": "x"} (ints and floats parsed); keys checked against `allowed`."""
    out: dict = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise UserError(f"{flag} takes KEY=VALUE pairs separated by commas (got '{part.strip()}')")
        if allowed is not None and key not in allowed:
            raise UserError(f"{flag}: unknown key '{key}'; choose from {', '.join(allowed)}")
        value = value.strip()
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
        out[key] = value
    return out


def cmd_bench(args) -> int:
    import dataclasses
    import shlex

    from .bench.run import run_bench
    from .bench.settings import FULL, QUICK, BenchSettings

    split = lambda text: [x.strip() for x in (text or "").split(",") if x.strip()]  # noqa: E731
    budget = QUICK if args.quick else FULL
    budget = dataclasses.replace(budget, **_key_values("--budget", args.budget, dataclasses.asdict(budget)))
    sampling = _sampling_flags(args)
    settings = BenchSettings(methods=split(args.methods), concepts=split(args.concepts), out=Path(args.out),
                             model=args.model, quick=args.quick, seed=args.seed, device=args.device, budget=budget,
                             train=_key_values("--train", args.train), sampling=sampling,
                             adversarial_prompts=args.adversarial_prompts, clip_model=args.clip_model,
                             concept_images=args.concept_images,
                             nudenet_threshold=args.nudenet_threshold, inception_weights=args.inception_weights,
                             suites=split(args.suites), command=shlex.join(["erasure", *args.argv]))
    results = run_bench(settings)
    if results is None:  # a launcher's other process: the main one reports
        return 0
    print(results["ranking"]["verdict"])
    print(f"results: {Path(args.out) / 'results.json'}  report: {Path(args.out) / 'report.html'}")
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from .judges.nudenet import DEFAULT_THRESHOLD as NUDENET_THRESHOLD

    p = argparse.ArgumentParser(prog="erasure", description="Erase concepts from text-to-image diffusion models.")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default="minisd", help="'minisd' (default), a Stable Diffusion folder or a cached hub id")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 25 for MiniSD)")
        sp.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
        sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")

    g = sub.add_parser("generate", help="write images for a prompt, and a grid")
    g.add_argument("--prompt", required=True)
    g.add_argument("--num-images", type=int, default=4)
    g.add_argument("--out", required=True, help="folder for the PNGs")
    model_args(g)
    g.set_defaults(func=cmd_generate)

    from .eval.suites import suite_names
    e = sub.add_parser("eval", help="generate, judge and report: a suite or a prompt file")
    e.add_argument("--suite", default=None, help=f"a shipped suite: {', '.join(suite_names())}")
    e.add_argument("--prompts", default=None, help="custom CSV: a prompt column, optional object,color,style, "
                   "evaluation_seed, evaluation_guidance")
    e.add_argument("--metrics", default=None, help="comma list overriding the suite's (default for --prompts: mini_classifier)")
    e.add_argument("--images-per-prompt", type=int, default=None, help="default: the suite's, 8 for --prompts")
    e.add_argument("--limit", type=int, default=None, help="only the first N prompts (a quick subset)")
    e.add_argument("--concept", default=None, help="the erased concept for erasure_rate/retention (default: from the "
                   "erasure's manifest)")
    e.add_argument("--attack-budget", type=float, default=1.0, help="metric asr: fraction of UnlearnDiffAtk's 50 "
                   "judged timesteps per prompt (0.2 = 10 of them: a cheaper run)")
    e.add_argument("--compare", default=None, help="also evaluate this base model and report both")
    e.add_argument("--json", default=None, help="write every number and its protocol here")
    e.add_argument("--out", default=None, help="folder for report.html, results.json and the image cache")
    e.add_argument("--cache", default=None, help="image cache folder (default: OUT/cache, else ~/.cache/erasure/images)")
    e.add_argument("--grid", default=None, help="optional PNG grid of every image, one row per prompt")
    e.add_argument("--batch-size", type=int, default=32, help="images generated together (memory grows with it); "
                   "under a launcher, batches are dealt between processes")
    e.add_argument("--nudenet-threshold", type=float, default=None, help=f"NudeNet score threshold (default {NUDENET_THRESHOLD})")
    e.add_argument("--clip-model", default=None, help="local CLIP folder for clip_score")
    e.add_argument("--reference", default=None, help="reference image folder for fid/kid")
    e.add_argument("--inception-weights", default=None, help="local Inception-v3 safetensors for fid/kid")
    e.add_argument("--harness", default=None, help="replay the harness recorded in this result JSON (every setting; "
                   "on --model when given): version and judge differences are printed beside the numbers")
    model_args(e)
    e.set_defaults(func=cmd_eval, model=None)  # None: minisd, or the harness's model

    t = sub.add_parser("train", help="erase a concept: train, save the erasure, write a before/after grid")
    t.add_argument("--method", default=None, help="registered method (default esd-x); see `erasure ls`")
    t.add_argument("--model", default=None, help="base model: 'minisd' (default), a Stable Diffusion folder or cached hub id")
    t.add_argument("--out", required=True, help="folder for the erasure files")
    t.add_argument("--config", default=None, help="YAML file of settings (flags override it)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--no-grid", dest="grid", action="store_false",
                   help="skip the before/after comparison grid (comparison.png): a full-size model spends "
                        "minutes drawing it on a CPU")
    _config_flags(t, _method_in(list(sys.argv[1:] if argv is None else argv)))
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="write an erasure as a complete standard diffusers folder, or as a LoRA file")
    x.add_argument("erasure_dir")
    x.add_argument("--out", required=True, help="a new folder (--format folder) or a NAME.safetensors file (lora, kohya)")
    x.add_argument("--format", default="folder", choices=["folder", "lora", "kohya"],
                   help="folder: a complete diffusers folder; lora: a LoRA file in diffusers' format "
                        "(pipe.load_lora_weights); kohya: a LoRA file in kohya's sd-scripts format")
    x.add_argument("--rank", type=int, default=None, help="the LoRA's rank per layer (lora, kohya; at most each layer's full rank)")
    x.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="the LoRA file's dtype (default: the erasure's)")
    x.set_defaults(func=cmd_export)

    im = sub.add_parser("import", help="an erasure made elsewhere (ESD's parameter file, AdvUnlearn's text encoder, a UNet "
                        "or full diffusers folder) as an erasure folder that eval, attack and bench judge")
    im.add_argument("source", help="a .safetensors file of changed tensors, or a CLIPTextModel, UNet or Stable Diffusion folder")
    im.add_argument("--base", required=True, help="the base model it was trained from (a folder, a cached hub id or 'minisd')")
    im.add_argument("--out", required=True, help="a new erasure folder")
    im.add_argument("--concept", default=None, help="the concept it erases (ESD's file names say it; else recorded as unknown)")
    im.add_argument("--allow-pickle", action="store_true",
                    help="read a .pt/.bin/.ckpt source with torch.load(weights_only=True) (tensors only), with a warning")
    im.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="store the changed tensors in this dtype (default: the source's)")
    im.set_defaults(func=cmd_import)

    xt = sub.add_parser("export-text-encoder", help="write an erasure's text encoder (AdvUnlearn) as a CLIPTextModel folder")
    xt.add_argument("erasure_dir")
    xt.add_argument("--out", required=True)
    xt.set_defaults(func=cmd_export_text_encoder)

    from .eval.asr import SAMPLERS
    a = sub.add_parser("attack", help="attack an erasure (discrete, ring-a-bell, inversion, relearn): pre-ASR and ASR "
                       "over a prompt set, judged by the judges")
    a.add_argument("--attack", default="discrete", choices=["discrete", "ring-a-bell", "inversion", "relearn"],
                   help="discrete (UnlearnDiffAtk), ring-a-bell, inversion (a token learned from concept images), "
                        "relearn (fine-tuning on concept images, ASR after k steps)")
    a.add_argument("--model", default=None, help="minisd (default), a Stable Diffusion folder or an erasure folder")
    a.add_argument("--concept", default=None, help="what the attack tries to bring back (default: the erasure's concept)")
    a.add_argument("--suite", default=None)
    a.add_argument("--prompts", default=None, help="a CSV with a prompt column (object/color/style columns select "
                   "the target prompts; seed/guidance columns are used)")
    a.add_argument("--json", required=True, help="results (every prompt's adversarial text); a rerun resumes")
    a.add_argument("--harness", default=None, help="replay the harness recorded in this result JSON (on --model "
                   "when given); version and judge differences are printed beside the numbers")
    a.add_argument("--limit", type=int, default=None, help="only the first N target prompts")
    a.add_argument("--budget", type=float, default=1.0, help="scale the attack's search (discrete: judged timesteps; "
                   "ring-a-bell: generations; inversion: steps; relearn: the k checkpoints)")
    a.add_argument("--images", default=None, help="inversion / relearn: a folder of images of the concept (MiniSD: "
                   "the world renders them)")
    a.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="any setting of the attack's "
                   "config, e.g. --set steps=500 (inversion), --set checkpoints=0,10,50,200 (relearn)")
    a.add_argument("--timesteps", type=int, default=None, help="discrete: evenly spaced timesteps, an image judged "
                   "after each (UnlearnDiffAtk: 50)")
    a.add_argument("--iterations", type=int, default=None, help="discrete: attack steps at each timestep (40)")
    a.add_argument("--n-tokens", type=int, default=None, help="discrete: adversarial prefix tokens (5); "
                   "ring-a-bell: free tokens (16)")
    a.add_argument("--lr", type=float, default=None, help="the attack's learning rate (discrete: 0.01)")
    a.add_argument("--nudenet-threshold", type=float, default=None, help="NudeNet's threshold for a nudity judge")
    a.add_argument("--sampler", choices=SAMPLERS, default=None, help="scheduler of every image the attack draws "
                   "(default: the reference's, lms, on Stable Diffusion; the model's own (pipeline) elsewhere)")
    a.add_argument("--attack-batch", type=int, default=8, help="discrete: prompts attacked together: memory grows "
                   "with it, results do not change (1 for the least memory)")
    a.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 elsewhere), float32 or bfloat16")
    a.add_argument("--gradient-checkpointing", default="auto", help="discrete: recompute the UNet's activations in the "
                   "backward pass: auto (on for a UNet over 300M parameters, i.e. Stable Diffusion), true, false")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto")
    a.set_defaults(func=cmd_attack)

    b = sub.add_parser("bench", help="the holistic benchmark: train every (method, concept), measure six dimensions, "
                       "write results.json and report.html (docs/bench.md)")
    b.add_argument("--methods", required=True, help="comma list of registered methods, e.g. esd-x,esd-u,salun")
    b.add_argument("--concepts", required=True, help="comma list, e.g. circle,star,striped (MiniSD) or nudity,van gogh")
    b.add_argument("--model", default="minisd", help="'minisd' (default) or a Stable Diffusion folder")
    b.add_argument("--out", required=True, help="folder for erasures, image cache, results.json and report.html; "
                   "a rerun resumes and computes only what is missing")
    b.add_argument("--quick", action="store_true", help="the small budget: 1/16 of each method's training steps and "
                   "self-generated data, 10 sampling steps, fewer prompts and images, a smaller attack budget "
                   "(docs/bench.md)")
    b.add_argument("--concept-images", default=None, help="a folder of images of the concept, for the inversion and "
                   "relearning attacks on Stable Diffusion (MiniSD renders its own)")
    b.add_argument("--adversarial-prompts", default=None, help="a fixed adversarial prompt file (.txt, or .csv with "
                   "'prompt' and optional 'concept' columns): its ASR is reported")
    b.add_argument("--suites", default=None, help="extra suites (shipped or plug-in) to run on every model")
    b.add_argument("--budget", default=None, help="override budget fields, e.g. target_prompts=8,attack_prompts=2")
    b.add_argument("--train", default=None, help="override settings of every method's training, e.g. steps=2")
    b.add_argument("--clip-model", default=None, help="local CLIP folder (Stable Diffusion: zero-shot judge, CLIP score)")
    b.add_argument("--nudenet-threshold", type=float, default=None, help=f"NudeNet score threshold (default {NUDENET_THRESHOLD})")
    b.add_argument("--inception-weights", default=None, help="local Inception-v3 safetensors (FID/KID on SD images)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--steps", type=int, default=None, help="sampling steps (default: each model's own)")
    b.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: each model's own)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    b.set_defaults(func=cmd_bench)

    from .demo import add_arguments as demo_arguments, main as cmd_demo
    d = sub.add_parser("demo", help="a local Gradio app: erase a concept, then compare base and erasure side by side")
    demo_arguments(d)
    d.set_defaults(func=cmd_demo)

    ls = sub.add_parser("ls", help="list methods and weight presets")
    ls.set_defaults(func=cmd_ls)
    return p


def cmd_ls(args) -> int:
    from .registry import get_method, method_names
    from .targets import target_names
    for name in method_names():
        spec = get_method(name)
        paper, mini = spec.default_config(), spec.default_config("minisd")
        trains = (paper.ls_summary() if hasattr(paper, "ls_summary") else
                  f"trains {paper.target}; defaults: {paper.steps} steps, lr {paper.lr:g} (MiniSD: {mini.steps} steps, "
                  f"lr {mini.lr:g})")
        print(f"{name:13s} {spec.description}\n{'':13s} {trains}")
    print("weight presets:", ", ".join(target_names()))
    from .eval.metrics import metric_names
    from .eval.suites import suite_names
    print("metrics:", ", ".join(metric_names()))
    print("suites:", ", ".join(suite_names()))
    return 0


def run(argv: list[str] | None = None) -> int:
    import logging
    # bitsandbytes (imported by diffusers when installed) warns at import about a 4-bit CPU
    # kernel erasure never uses; a one-line error stays one line
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    args = build_parser(argv).parse_args(argv)
    if args.command == "bench":  # the report shows the command that made it
        args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"erasure: error: {e}", file=sys.stderr)
        # 2, or the error's own code: TrainingInterrupted (Ctrl-C, checkpoint saved) returns 130
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        # Ctrl-C outside a training step loop (loading, generating, evaluating): every file is
        # written through a temp name and a rename, so nothing half-written is left behind
        print("erasure: interrupted (Ctrl-C); files already written are complete, none is half-written", file=sys.stderr)
        return 130


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
