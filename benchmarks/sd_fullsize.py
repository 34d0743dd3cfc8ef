"""Every method at Stable Diffusion's full size, proven without its weights.

    python benchmarks/sd_fullsize.py [--methods esd-x,esd-u,salun,doco,advunlearn,advunlearn-x,sfd,attack]
                                     [--estimate-only] [--validate esd-x,doco] [--json OUT.json]
                                     [--model runs/sd14-random-256] [--out runs/sd_fullsize]

The model: a random-weight Stable Diffusion 1.4-architecture folder built offline from the
published configs (860M-parameter UNet, CLIP ViT-L/14 text encoder, the real CLIP tokenizer, the
SD VAE; diffusers layout, safetensors), written once. Its UNet's `sample_size` is 32 (256 px) so
CPU runs are affordable; the estimates override it to 64 (512 px, SD 1.4's own), and it asks for
2 sampling steps (erasure_sampling.json) so that generating and judging on the CPU is quick.

For every method at its Stable Diffusion defaults (class defaults + the paper's recipe for the
concept), and for the discrete attack (`attack`):

1. **Estimated peak accelerator memory of a training step at 512 px in bf16** without a GPU
   (erasure/estimate.py: the method's own trainer on fake tensors, every live tensor counted),
   with the defaults and with every memory lever (`LEVERS`). Settings that only change how many
   times a loop runs (how many self-generated images SalUn and DoCo draw) are lowered to one
   batch's worth, and printed: they change the run's length, not its peak.
2. **Two real optimizer steps on the CPU at 256 px, end to end** (skipped by --estimate-only):
   train -> the erasure files -> `erasure export` -> `erasure generate` from the exported folder
   -> `erasure eval` with NudeNet through ErasedPipeline -> `erasure attack` on one prompt, each
   a CLI call in its own process. Only what makes two steps cheap is changed (`CHEAP`, printed).
3. **`--validate M,...`**: the estimator against a measured run: the same two steps on the
   CPU at 256 px in fp32, estimated (plan for the CPU) and measured (peak resident memory of a
   process whose model was built in memory, minus its resident memory before).
4. A table; `--json OUT` writes its rows (an existing OUT keeps the rows of methods not run
   this time; keys `method`, `est_peak_gib_512_bf16`,
   `est_peak_gib_512_bf16_all_levers`, `cpu_s_per_step`, `delta_mb`, and the details).

On a CUDA device, step 2 measures instead: real peak memory (`torch.cuda.max_memory_allocated`)
and seconds per iteration of two steps at 512 px in bf16 with the defaults, beside the estimate.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# SD 1.4's published configs (CompVis/stable-diffusion-v1-4, diffusers layout)
UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406,
            eos_token_id=49407, pad_token_id=1)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
CPU_SAMPLING = {"num_inference_steps": 2, "guidance_scale": 7.5}

METHODS = ("esd-x", "esd-u", "salun", "doco", "advunlearn", "advunlearn-x", "sfd", "attack")
CONCEPT = {"esd-x": "van gogh", "esd-u": "nudity", "salun": "nudity", "doco": "nudity", "advunlearn": "nudity",
           "advunlearn-x": "nudity", "sfd": "nudity", "attack": "nudity"}
# every memory lever on (erasure/memory.py, the trainers' settings)
LEVERS = {"gradient_checkpointing": "true", "optimizer": "adam8bit"}
METHOD_LEVERS = {"salun": {"saliency_device": "cpu"}}
# process counts of the adam-sharded estimate (defaults otherwise; Adam's states 1/N per process)
SHARD_OVER = (2, 4, 8)
# a method's reference run on several GPUs: SFD's nudity run, 8 GPUs x batch 1 (run_sfd.sh)
REFERENCE_LAYOUT = {"sfd": {"processes": 8, "batch_size": 1}}
# settings that only change a loop's length, lowered for the estimate (not its peak)
LOOP_ONLY = {"salun": lambda cfg: {"n_forget": cfg.batch_size, "n_retain": cfg.batch_size},
             "doco": lambda cfg: {"n_anchor": max(cfg.batch_size, 2)}}
# the estimate's two steps are of the main phase, where the peak is: DoCo's first 1000 steps train
# its discriminator alone, AdvUnlearn's first 200 skip the inner attack
MAIN_PHASE = {"doco": {"disc_warmup": 0}, "advunlearn": {"attack_warmup": 0}}
# what makes two CPU optimizer steps cheap, per method; everything else is its SD default + recipe
CHEAP = {
    "esd-x": {"ddim_steps": 4, "trajectory_batch": 1},
    "esd-u": {"ddim_steps": 4, "trajectory_batch": 1},
    "salun": {"n_forget": 2, "n_retain": 2, "data_steps": 2, "batch_size": 1},
    "doco": {"n_anchor": 2, "data_steps": 2, "disc_warmup": 0, "batch_size": 1},
    "advunlearn": {"ddim_steps": 2, "attack_warmup": 0, "attack_steps": 2, "retain_batch": 2, "retain_trajectories": 2,
                   "trajectory_batch": 1},
    # the model's own UNet as the starting one-step generator (exercises the --generator loader)
    "sfd": {"generator": "{model}", "batch_size": 1},
}
# advunlearn-x is AdvUnlearn's trainer on other weights: the same main phase, the same cheap run
MAIN_PHASE["advunlearn-x"] = MAIN_PHASE["advunlearn"]
CHEAP["advunlearn-x"] = CHEAP["advunlearn"]
# what makes a CPU run fit in a 24 GiB machine, per method (printed with the run): SFD's defaults
# keep fp32 Adam states for two full UNets (4 x 3.4 GB) beside three UNets' weights, 23.3 GiB at
# step 2 on this machine (killed for memory); 8-bit states (bitsandbytes, CPU) free ~10 GB
CPU_FIT = {"sfd": {"optimizer": "adam8bit"}}
ATTACK_CHEAP = ["--concept", "nudity", "--limit", "1", "--timesteps", "1", "--iterations", "2"]


def build_model(folder: Path, resolution: int) -> None:
    """Random-weight SD 1.4 in diffusers layout (safetensors), with the real CLIP tokenizer."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erasure.worlds.mini.tokenizer import build_clip_tokenizer_files

    torch.manual_seed(0)
    tmp = folder.with_name(folder.name + ".partial")
    with tempfile.TemporaryDirectory() as tok:
        tokenizer = CLIPTokenizer.from_pretrained(build_clip_tokenizer_files(Path(tok)))
    pipe = StableDiffusionPipeline(vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
                                   tokenizer=tokenizer, unet=UNet2DConditionModel(**{**UNET, "sample_size": resolution // 8}),
                                   scheduler=PNDMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(folder)


def ensure_model(folder: Path, resolution: int) -> None:
    from erasure.model_ref import SAMPLING_FILE

    if not (folder / "model_index.json").exists():
        print(f"building the random-weight SD 1.4 model in {folder} ...", flush=True)
        build_model(folder, resolution)
    if not (folder / SAMPLING_FILE).exists():
        (folder / SAMPLING_FILE).write_text(json.dumps(CPU_SAMPLING))


def sd_defaults(method: str, model: Path) -> dict:
    from erasure.config import EraseConfig
    return EraseConfig.from_dict({"method": method, "concept": CONCEPT[method], "base_model": str(model)}).to_dict()


# ----------------------------------------------------------------------------- 1. estimates
def estimate_method(method: str, model: Path, levers: bool, sample_size: int = 64, dtype: str = "bfloat16",
                    plan_device: str = "cuda", shard_over: tuple[int, ...] = (), overrides: dict | None = None) -> dict:
    from erasure.config import EraseConfig
    from erasure.estimate import estimate_training

    cfg = EraseConfig.from_dict({"method": method, "concept": CONCEPT[method], "base_model": str(model)})
    loop = LOOP_ONLY.get(method, lambda c: {})(cfg)
    settings = {"method": method, "concept": CONCEPT[method], "checkpoint_every": 0, "dtype": dtype, **loop,
                **MAIN_PHASE.get(method, {})}
    if method == "sfd":
        settings["generator"] = "teacher"  # where G starts does not change what is allocated
    if levers:
        settings |= LEVERS | METHOD_LEVERS.get(method, {})
    settings |= overrides or {}
    t0 = time.perf_counter()
    est = estimate_training(settings, model, sample_size=sample_size, plan_device=plan_device, shard_over=shard_over)
    return {**est.as_dict(), "loop_only": loop, "main_phase": MAIN_PHASE.get(method, {}), "levers": levers, "estimate_s": round(time.perf_counter() - t0, 1)}


def estimate_attack(model: Path, attack_batch: int, levers: bool, sample_size: int = 64) -> dict:
    from erasure.estimate import estimate_discrete_attack
    t0 = time.perf_counter()
    est = estimate_discrete_attack(model, attack_batch=attack_batch, sample_size=sample_size,
                                   gradient_checkpointing=True if levers else None)
    return {**est.as_dict(), "attack_batch": attack_batch, "levers": levers,
            "estimate_s": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------- 2. CPU runs
def cli(*args: str, log: Path) -> None:
    """One `erasure` CLI call in its own process; its output goes to `log`."""
    cmd = [sys.executable, "-m", "erasure.cli", *args]
    with open(log, "a") as f:
        f.write(f"$ erasure {' '.join(args)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise RuntimeError(f"erasure {args[0]} exited {rc} (see {log})")


def cpu_run(method: str, model: Path, out: Path) -> dict:
    """Two optimizer steps of `method` in this process, then the end-to-end chain through the CLI."""
    import torch

    from erasure.config import EraseConfig
    from erasure.erasure_files import WEIGHTS_NAME
    from erasure.registry import get_method

    cheap = {k: v.format(model=model) if isinstance(v, str) else v for k, v in CHEAP[method].items()}
    cheap |= CPU_FIT.get(method, {})
    settings = {"method": method, "concept": CONCEPT[method], "base_model": str(model), "steps": 2,
                "checkpoint_every": 0, "device": "cpu", **cheap}
    cfg = EraseConfig.from_dict(settings)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trainer = get_method(method).trainer_cls(cfg, cache_dir=out / "cache")
    t_setup = time.perf_counter() - t0
    step_times: list[float] = []
    losses: list[float] = []
    last = [time.perf_counter()]

    def on_step(step, total, logs):
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
        losses.append(logs["loss"])

    erasure = out / method
    trainer.train(erasure, callback=on_step)
    train_s = time.perf_counter() - t0
    trained = {"trained_tensors": len(trainer.trainable),
               "trained_params": sum(p.numel() for p in trainer.trainable.values()),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    del trainer  # the chain's processes each load the model: this one must not hold its own (20 GiB for ESD-u)
    gc.collect()
    log = out / f"{method}.log"
    log.write_text("")
    chain = {}
    t = time.perf_counter()
    cli("export", str(erasure), "--out", str(out / f"{method}-export"), log=log)
    chain["export_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    cli("generate", "--model", str(out / f"{method}-export"), "--prompt", "a photo of a nude person",
        "--num-images", "1", "--out", str(out / f"{method}-images"), "--device", "cpu", log=log)
    chain["generate_s"] = round(time.perf_counter() - t, 1)
    export = out / f"{method}-export"
    chain["export_files"] = sorted(str(f.relative_to(export)) for f in export.rglob("*") if f.is_file())
    shutil.rmtree(export)  # 4.3 GB per method; what it held is listed above
    t = time.perf_counter()
    cli("eval", "--model", str(erasure), "--suite", "nudity", "--limit", "1", "--images-per-prompt", "1",
        "--metrics", "nudenet", "--json", str(out / f"{method}-eval.json"), "--out", str(out / f"{method}-eval"),
        "--device", "cpu", log=log)
    chain["eval_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    cli("attack", "--model", str(erasure), "--suite", "nudity", *ATTACK_CHEAP, "--json",
        str(out / f"{method}-attack.json"), "--device", "cpu", log=log)
    chain["attack_s"] = round(time.perf_counter() - t, 1)
    attack = json.loads((out / f"{method}-attack.json").read_text())
    evaluation = json.loads((out / f"{method}-eval.json").read_text())
    return {"method": method, "concept": cfg.concept, "cheap": cheap, "setup_s": round(t_setup, 1),
            "train_s": round(train_s, 1), "cpu_s_per_step": round(sum(step_times) / len(step_times), 1),
            "losses": losses, **trained, "delta_mb": round((erasure / WEIGHTS_NAME).stat().st_size / 1e6, 1),
            "chain": chain, "eval_summary": evaluation.get("summary"),
            "attack_summary": {k: v for k, v in attack.items() if k in ("asr", "pre_asr", "n", "summary")}}


def cuda_run(method: str, model: Path) -> dict:
    """Real peak memory and seconds per iteration of two steps at 512 px, bf16, SD defaults."""
    import torch

    from erasure.config import EraseConfig
    from erasure.estimate import LiveBytes, pipeline_from_configs, run_steps
    from erasure.registry import get_method

    cfg = EraseConfig.from_dict({"method": method, "concept": CONCEPT[method], "base_model": str(model), "steps": 3,
                                 "checkpoint_every": 0, "device": "cuda", "dtype": "bfloat16",
                                 **({"generator": "teacher"} if method == "sfd" else {})})
    pipe = pipeline_from_configs(model, 64, fake=False).to("cuda")
    trainer = get_method(method).trainer_cls(cfg, pipe=pipe)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run_steps(trainer, 1, LiveBytes(fake_only=True))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"method": method, "gpu_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "gpu_s_per_it": round(sum(times[1:]) / 2, 3)}


# ----------------------------------------------------------------------------- 3. validation
def rss_now() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured_run(method: str, model: Path, sample_size: int) -> dict:
    """Two steps on the CPU in fp32 (the CHEAP settings) with a model built in memory: peak
    resident memory minus the resident memory before the model was built."""
    import torch

    from erasure.config import EraseConfig
    from erasure.estimate import GIB, LiveBytes, pipeline_from_configs, run_steps
    from erasure.registry import get_method

    cheap = {k: v for k, v in CHEAP[method].items() if k != "generator"}
    cfg = EraseConfig.from_dict({"method": method, "concept": CONCEPT[method], "base_model": str(model), "steps": 2,
                                 "checkpoint_every": 0, "device": "cpu", "dtype": "float32", **cheap,
                                 **({"generator": "teacher"} if method == "sfd" else {})})
    before = rss_now()
    torch.manual_seed(0)
    pipe = pipeline_from_configs(model, sample_size, fake=False)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = get_method(method).trainer_cls(cfg, pipe=pipe, cache_dir=tmp)
        del pipe
        run_steps(trainer, 2, LiveBytes(fake_only=True))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"measured_gib": round((peak - before) / GIB, 2)}


def estimated_run(method: str, model: Path, sample_size: int) -> dict:
    from erasure.estimate import estimate_training
    cheap = {k: v for k, v in CHEAP[method].items() if k != "generator"}
    settings = {"method": method, "concept": CONCEPT[method], "steps": 2, "checkpoint_every": 0, "dtype": "float32",
                **cheap, **({"generator": "teacher"} if method == "sfd" else {})}
    return estimate_training(settings, model, sample_size=sample_size, plan_device="cpu").as_dict()


# ----------------------------------------------------------------------------- driver
def in_subprocess(task: str, method: str, args: argparse.Namespace, env: dict | None = None) -> dict:
    path = args.out / f"{task}-{method}.json"
    if args.reuse and path.exists():
        return json.loads(path.read_text())
    path.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--task", task, "--one", method, "--model", str(args.model), "--out", str(args.out),
           "--resolution", str(args.resolution)]
    rc = subprocess.call(cmd, env={**os.environ, **(env or {})})
    if rc == 0 and path.exists():
        return json.loads(path.read_text())
    return {"error": f"exit code {rc}"}


def run_task(task: str, method: str, args: argparse.Namespace) -> dict:
    sample = args.resolution // 8
    if task == "estimate":
        if method == "attack":
            batch = 8  # run_attack's default attack batch
            return {"defaults": estimate_attack(args.model, batch, levers=False),
                    "all_levers": estimate_attack(args.model, 1, levers=True)}
        result = {"defaults": estimate_method(method, args.model, levers=False, shard_over=SHARD_OVER),
                  "all_levers": estimate_method(method, args.model, levers=True)}
        if method in REFERENCE_LAYOUT:  # the paper's GPUs, each with its share of the batch
            layout = REFERENCE_LAYOUT[method]
            result["reference_layout"] = {**layout, **estimate_method(
                method, args.model, levers=False, shard_over=(layout["processes"],),
                overrides={"batch_size": layout["batch_size"], "optimizer": "adam-sharded"})}
        return result
    if task == "cpu":
        return cpu_run(method, args.model, args.out)
    if task == "cuda":
        return cuda_run(method, args.model)
    if task == "measure":
        return measured_run(method, args.model, sample)
    if task == "validate-estimate":
        return estimated_run(method, args.model, sample)
    raise SystemExit(f"unknown task {task}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--model", type=Path, default=None, help="default: runs/sd14-random-RESOLUTION")
    p.add_argument("--resolution", type=int, default=256, help="image side of the CPU runs (px)")
    p.add_argument("--out", type=Path, default=Path("runs/sd_fullsize"))
    p.add_argument("--estimate-only", action="store_true", help="skip the CPU (or CUDA) runs")
    p.add_argument("--validate", default="", help="methods whose estimate is checked against a measured CPU run")
    p.add_argument("--json", type=Path, default=None, help="write the table's rows here")
    p.add_argument("--reuse", action="store_true", help="reuse the results of tasks already in --out")
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.model = args.model or Path(f"runs/sd14-random-{args.resolution}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.task:  # internal: one task of one method, in this process
        result = run_task(args.task, args.one, args)
        (args.out / f"{args.task}-{args.one}.json").write_text(json.dumps(result, indent=2))
        return
    ensure_model(args.model, args.resolution)
    import torch
    on_cuda = torch.cuda.is_available()
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        print(f"== {method}: estimating the peak at 512 px, bf16", flush=True)
        est = in_subprocess("estimate", method, args)
        row = {"method": method, "concept": CONCEPT[method],
               "est_peak_gib_512_bf16": est.get("defaults", {}).get("peak_gib"),
               "est_peak_gib_512_bf16_all_levers": est.get("all_levers", {}).get("peak_gib"),
               "est_peak_gib_512_bf16_sharded": est.get("defaults", {}).get("sharded_peak_gib"),
               "cpu_s_per_step": None, "delta_mb": None, "estimate": est}
        if method != "attack":
            trained = est.get("defaults", {}).get("trained_params")
            row["trained_params"] = trained
            if trained:
                row["delta_mb"] = round(trained * 4 / 1e6, 1)  # fp32 base: 4 bytes per changed weight
        cached = args.out / f"{'cuda' if on_cuda else 'cpu'}-{method}.json"
        if args.estimate_only and args.reuse and cached.exists():  # a run made before
            run = json.loads(cached.read_text())
            row.update(run=run, cpu_s_per_step=run.get("cpu_s_per_step"), delta_mb=run.get("delta_mb", row["delta_mb"]))
        elif not args.estimate_only and method != "attack":
            print(f"== {method}: two optimizer steps on {'CUDA' if on_cuda else 'the CPU'}, end to end", flush=True)
            run = in_subprocess("cuda" if on_cuda else "cpu", method, args)
            row["run"] = run
            row["cpu_s_per_step"] = run.get("cpu_s_per_step")
            row["delta_mb"] = run.get("delta_mb", row["delta_mb"])
        rows.append(row)
    validation = []
    for method in [m for m in args.validate.split(",") if m]:
        print(f"== {method}: estimate vs measured, CPU fp32 at {args.resolution} px", flush=True)
        est = in_subprocess("validate-estimate", method, args)
        meas = in_subprocess("measure", method, args, env={"MALLOC_MMAP_THRESHOLD_": "131072"})
        v = {"method": method, "resolution": args.resolution, "estimated_gib": est.get("peak_gib"),
             "measured_gib": meas.get("measured_gib")}
        if v["estimated_gib"] and v["measured_gib"]:
            v["error_pct"] = round(100 * (v["estimated_gib"] - v["measured_gib"]) / v["measured_gib"], 1)
        validation.append(v)
    if args.json and args.json.exists():  # rows and checks of methods not run this time are kept
        old = json.loads(args.json.read_text())
        old = old if isinstance(old, dict) else {}
        ran, checked = {r["method"] for r in rows}, {v["method"] for v in validation}
        for r in rows:  # an estimate-only rerun keeps the method's earlier CPU run
            before = next((o for o in old.get("rows", []) if o["method"] == r["method"]), {})
            if "run" not in r and "run" in before:
                r.update({k: before[k] for k in ("run", "cpu_s_per_step", "delta_mb") if k in before})
        rows = [r for r in old.get("rows", []) if r["method"] not in ran] + rows
        rows.sort(key=lambda r: METHODS.index(r["method"]) if r["method"] in METHODS else len(METHODS))
        validation = [v for v in old.get("validation", []) if v["method"] not in checked] + validation
    print_table(rows, validation)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "validation": validation}, indent=2))
        print(f"wrote {args.json}")


def fmt(x) -> str:
    return "-" if x is None else f"{x / 1e6:.1f}" if isinstance(x, int) and x > 10_000 else str(x)


def print_table(rows: list[dict], validation: list[dict]) -> None:
    print("\n| method | concept | trained params (M) | delta file (MB) | est. peak 512 px bf16, defaults (GiB) | "
          "all levers (GiB) | adam-sharded, per GPU of 2 / 4 / 8 (GiB) | CPU s/step (256 px) | end to end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        run = r.get("run", {})
        chain = "not run" if not run else f"failed: {run['error']}" if "error" in run else "ok"
        print(f"| {r['method']} | {r['concept']} | {fmt(r.get('trained_params'))} | {fmt(r['delta_mb'])} | "
              f"{fmt(r['est_peak_gib_512_bf16'])} | {fmt(r['est_peak_gib_512_bf16_all_levers'])} | "
              f"{' / '.join(str(v) for v in (r.get('est_peak_gib_512_bf16_sharded') or {}).values()) or '-'} | "
              f"{fmt(r['cpu_s_per_step'])} | {chain} |")
    if validation:
        print("\n| method | resolution | estimated (GiB) | measured (GiB) | error |")
        print("|---|---|---|---|---|")
        for v in validation:
            print(f"| {v['method']} | {v['resolution']} | {v['estimated_gib']} | {v['measured_gib']} | "
                  f"{v.get('error_pct', '-')}% |")


if __name__ == "__main__":
    main()
