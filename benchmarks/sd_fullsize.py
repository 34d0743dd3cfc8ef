"""Every method's Stable Diffusion path on a full-size SD-1.4-architecture model with random
weights, built offline from the published configs (860M-parameter UNet, 123M CLIP ViT-L/14 text
encoder, 84M VAE): two optimizer steps each, on the CPU, with wall time and peak memory.

    python benchmarks/sd_fullsize.py [--methods esd-x,esd-u,salun,doco,advunlearn,sfd]
                                     [--model runs/sd14-random] [--resolution 256] [--out runs/sd_fullsize]

The model folder is written once (diffusers layout, safetensors, ~4.3 GB) and reused; its UNet's
`sample_size` is resolution / 8 (the size the pipeline and the trainers sample at: 256 px on the
CPU; 512 px is SD 1.4's own), nothing else differs from SD 1.4. Each method
runs in its own process (so peak memory is its own) with its Stable Diffusion defaults, the
recipe of its paper for the concept, and only the settings that make two steps cheap changed:
steps 2, batch 1, a handful of self-generated images sampled in 2 steps, few DDIM steps, and
for SFD the model's own UNet as its starting generator, stored in bf16 where frozen.
Those overrides are printed beside every result. Results: OUT/results.json and a table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
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

# What makes two optimizer steps cheap, per method; everything else is its SD default + recipe.
CHEAP = {
    "esd-x": {"ddim_steps": 4, "trajectory_batch": 1},
    "esd-u": {"ddim_steps": 4, "trajectory_batch": 1},
    "salun": {"n_forget": 2, "n_retain": 2, "data_steps": 2},
    "doco": {"n_anchor": 2, "data_steps": 2, "disc_warmup": 0},
    "advunlearn": {"ddim_steps": 2, "attack_warmup": 0, "attack_steps": 2, "retain_batch": 2, "retain_trajectories": 2,
                   "trajectory_batch": 1},
    # the model's own UNet as the starting one-step generator (exercises the --generator loader);
    # bf16 frozen teacher and gradient checkpointing keep three UNets and two optimizers in 24 GiB
    "sfd": {"generator": "{model}", "dtype": "bfloat16", "gradient_checkpointing": True},
}
CONCEPT = {"esd-x": "van gogh", "esd-u": "nudity", "salun": "nudity", "doco": "nudity", "advunlearn": "nudity",
           "sfd": "nudity"}


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


def run_one(method: str, model: Path, out: Path, extra: dict) -> dict:
    """Two optimizer steps of `method` (in this process); returns time and peak memory."""
    import torch

    from erasure.config import EraseConfig
    from erasure.registry import get_method

    cheap = {k: v.format(model=model) if isinstance(v, str) else v for k, v in CHEAP[method].items()}
    settings = {"method": method, "concept": CONCEPT[method], "base_model": str(model), "steps": 2, "batch_size": 1,
                "checkpoint_every": 0, "device": "cpu", **cheap, **extra}
    cfg = EraseConfig.from_dict(settings)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trainer = get_method(method).trainer_cls(cfg, cache_dir=out / "cache")
    t_setup = time.perf_counter() - t0
    losses: list[float] = []
    trainer.train(out / method, callback=lambda step, total, logs: losses.append(logs["loss"]))
    wall = time.perf_counter() - t0
    return {"method": method, "concept": cfg.concept, "overrides": {k: v for k, v in settings.items()
                                                                  if k not in ("method", "concept", "base_model")},
            "setup_s": round(t_setup, 1), "total_s": round(wall, 1), "losses": losses,
            "trained_tensors": len(trainer.trainable),
            "trained_params_M": round(sum(p.numel() for p in trainer.trainable.values()) / 1e6, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(CHEAP))
    p.add_argument("--model", type=Path, default=None, help="default: runs/sd14-random-RESOLUTION")
    p.add_argument("--resolution", type=int, default=256, help="image side every method samples at (px)")
    p.add_argument("--out", type=Path, default=Path("runs/sd_fullsize"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="an extra setting for every method, e.g. --set dtype='\"bfloat16\"'")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = p.parse_args()
    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    args.model = args.model or Path(f"runs/sd14-random-{args.resolution}")
    if args.one:
        result = run_one(args.one, args.model, args.out, extra)
        (args.out / f"{args.one}.json").write_text(json.dumps(result, indent=2))
        return
    if not (args.model / "model_index.json").exists():
        print(f"building the random-weight SD 1.4 model in {args.model} ...", flush=True)
        build_model(args.model, args.resolution)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for method in args.methods.split(","):
        print(f"== {method}: two optimizer steps", flush=True)
        cmd = [sys.executable, __file__, "--one", method, "--model", str(args.model), "--out", str(args.out),
               *sum((["--set", s] for s in args.set), [])]
        rc = subprocess.call(cmd, env=os.environ)
        path = args.out / f"{method}.json"
        if rc == 0 and path.exists():
            results.append(json.loads(path.read_text()))
        else:
            results.append({"method": method, "error": f"exit code {rc}"})
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| method | concept | trained params (M) | setup (s) | total (s) | peak RSS (GiB) | losses | cheap settings |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['method']} | failed: {r['error']} | | | | | | |")
            continue
        cheap = ", ".join(f"{k}={v}" for k, v in r["overrides"].items() if k not in ("device", "checkpoint_every"))
        print(f"| {r['method']} | {r['concept']} | {r['trained_params_M']} | {r['setup_s']} | {r['total_s']} | "
              f"{r['peak_rss_gib']} | {', '.join(f'{x:.4g}' for x in r['losses'])} | {cheap} |")


if __name__ == "__main__":
    main()
