"""The formats at Stable Diffusion 1.4 size, on a random-weight SD 1.4 built offline from its configs
(benchmarks/sd_fullsize.py): an ESD-x parameter file as ESD's official esd_sd.py writes it (every
attn2 Linear's parameters in bfloat16, the weights moved) and an AdvUnlearn-style text encoder folder
imported with `erasure import`; the ESD-x import exported as LoRA at ranks 1, 16 and full rank, each
loaded by diffusers' `load_lora_weights` and compared with the erasure's UNet output; load_erasure onto
an img2img pipeline. Prints times, sizes, changed-tensor counts and errors.

    python benchmarks/formats_fullsize.py [--model runs/sd14-random-256] [--out runs/formats_fullsize]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def timed(label: str, fn):
    start = time.perf_counter()
    value = fn()
    print(f"{label}: {time.perf_counter() - start:.1f} s", flush=True)
    return value


def unet_out(pipe) -> torch.Tensor:
    ids = pipe.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
        return pipe.unet(latents, 500, encoder_hidden_states=hidden).sample


def main() -> None:
    from sd_fullsize import ensure_model
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("runs/sd14-random-256"))
    p.add_argument("--out", type=Path, default=Path("runs/formats_fullsize"))
    args = p.parse_args()
    ensure_model(args.model, 256)
    args.out.mkdir(parents=True, exist_ok=True)

    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from erasure import ErasedPipeline, load_erasure
    from erasure.importing import import_erasure
    from erasure.lora import export_lora

    rows: dict = {}
    base = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    gen = torch.Generator().manual_seed(0)
    trained = {}
    for name, module in base.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and "attn2" in name:
            for param_name, param in module.named_parameters():
                value = param.detach().clone()
                if param_name == "weight":  # ESD moves the weights; a short run leaves biases near equal
                    value += 1e-3 * torch.randn(value.shape, generator=gen)
                trained[f"{name}.{param_name}"] = value.to(torch.bfloat16)
    esd_file = args.out / "esd-cat-from-cat-esdx.safetensors"
    save_file(trained, str(esd_file))
    rows["esd_file_mb"] = esd_file.stat().st_size / 1e6
    esd = args.out / "esd-x-imported"
    if esd.exists():
        import shutil
        shutil.rmtree(esd)
    result = timed("import ESD-x parameter file", lambda: import_erasure(esd_file, str(args.model), esd))
    print("\n".join(result.lines()))
    rows["esd_changed"], rows["esd_left_out"] = len(result.changed), len(result.unchanged)

    encoder = CLIPTextModel(base.text_encoder.config)
    encoder.load_state_dict(base.text_encoder.state_dict())
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "self_attn" in name and name.endswith("weight"):
                param.add_(1e-3 * torch.randn(param.shape, generator=gen))
    te_folder = args.out / "advunlearn-te"
    encoder.save_pretrained(te_folder, safe_serialization=True)
    adv = args.out / "advunlearn-imported"
    if adv.exists():
        import shutil
        shutil.rmtree(adv)
    result = timed("import text-encoder folder", lambda: import_erasure(te_folder, str(args.model), adv))
    print("\n".join(result.lines()))
    rows["te_changed"] = len(result.changed)

    erased = ErasedPipeline.from_pretrained(esd)
    target, plain = unet_out(erased), unet_out(base)
    rows["erasure_vs_base"] = float((target - plain).abs().max())
    rows["lora"] = []
    for rank in (1, 16, 100000):
        file = args.out / f"esd-x-r{rank}.safetensors"
        export = timed(f"export rank {rank}", lambda: export_lora(esd, file, rank, "diffusers", "float32"))
        pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
        timed(f"load_lora_weights rank {rank}", lambda: pipe.load_lora_weights(str(file)))
        got = unet_out(pipe)
        row = {"rank": rank, "file_mb": export.bytes / 1e6, "worst_layer_error": max(f.relative_error for f in export.layers),
               "unet_out_max_abs_diff": float((got - target).abs().max()), "layers": len(export.layers)}
        print(json.dumps(row), flush=True)
        rows["lora"].append(row)
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(args.model, safety_checker=None, requires_safety_checker=False)
    timed("load_erasure onto img2img", lambda: load_erasure(img2img, esd))
    rows["img2img_unet_equals_erasure"] = bool(torch.equal(unet_out(img2img), target))
    print(json.dumps(rows, indent=1))
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
