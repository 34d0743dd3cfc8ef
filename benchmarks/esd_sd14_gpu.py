"""ESD-x (or any method's) step time and peak GPU memory on Stable Diffusion v1.4's exact
architecture (random weights built from its published configs), bf16, with xformers and with
PyTorch SDPA.

    python benchmarks/esd_sd14_gpu.py [--steps 30] [--method esd-x] [--reference]
    python benchmarks/esd_sd14_gpu.py --method advunlearn --steps 6   # issue 6: a few AdvUnlearn iterations
    python benchmarks/esd_sd14_gpu.py --method sfd --steps 4          # issue 8: a few SFD iterations (batch 8)

For advunlearn the inner attack runs from the first iteration (attack_warmup 0) so every timed
iteration is a full bi-level step (30 attack steps + the outer step), the paper's defaults.

`--reference` also times the reference recipe (one fresh partial DDIM trajectory per step,
refresh_every=1) beside ours, in the same run, and prints the ratio.
Reference figures measured on an H100 with the official ESD script (512 px, batch 1, bf16):
1.05 s/it and 6.4 GiB peak for esd-x. Bar: <= 0.35 s/it at <= 6.4 GiB. Needs CUDA.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
                 eos_token_id=49407, pad_token_id=49407)
SD14_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)


def build_sd14():
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erasure.model_ref import MINISD_PATH
    from erasure.worlds.mini.nets import SCHEDULER_CONFIG

    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD14_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD14_TEXT)),
        tokenizer=CLIPTokenizer.from_pretrained(MINISD_PATH / "tokenizer"), unet=UNet2DConditionModel(**SD14_UNET),
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def time_run(method: str, attention: str, steps: int, **overrides) -> tuple[float, float]:
    from erasure.config import EraseConfig
    from erasure.pipelines import set_attention_backend
    from erasure.registry import get_method

    pipe = build_sd14().to("cuda")
    used = set_attention_backend(pipe, attention)
    assert used == attention, f"asked for {attention}, got {used}"
    config = EraseConfig.from_dict({"method": method, "concept": "nudity", "steps": steps, "dtype": "bfloat16",
                                    "device": "cuda", "attention": attention, "checkpoint_every": 0, **overrides})
    trainer = get_method(method).trainer_cls(config, pipe=pipe)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.autocast():
            loss = trainer.compute_loss()
        loss.backward()
        trainer.optimizer.step()
        trainer.step += 1
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del trainer, pipe
    torch.cuda.empty_cache()
    # the first refresh_every window includes one trajectory sampling: average over whole windows
    return statistics.mean(times[1:]), peak


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=51)
    p.add_argument("--method", default="esd-x")
    p.add_argument("--reference", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("not measured: no GPU (this benchmark needs CUDA)")
    print(f"{torch.cuda.get_device_name()} | {args.method} | SD v1.4 architecture, random weights, 512 px, batch 1, bf16")
    for attention in ("xformers", "sdpa"):
        extra = {"attack_warmup": 0} if args.method == "advunlearn" else {}
        try:
            s, peak = time_run(args.method, attention, args.steps, **extra)
        except Exception as e:  # xformers not installed
            print(f"{attention:8s}: not measured ({e})")
            continue
        bar = " (bar: <= 0.35 s/it, <= 6.4 GiB)" if args.method == "esd-x" else ""
        print(f"{attention:8s}: {s:.3f} s/it, peak {peak:.2f} GiB{bar}")
        if args.reference:
            r, rpeak = time_run(args.method, attention, min(args.steps, 20), refresh_every=1)
            print(f"{attention:8s}: reference recipe {r:.3f} s/it, peak {rpeak:.2f} GiB; ours is {r / s:.1f}x faster")


if __name__ == "__main__":
    main()
