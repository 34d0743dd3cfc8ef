"""LoRA export: an erasure's change as low-rank factors per layer, in the files other tools load.

The change of a Linear or Conv2d weight, D = W_erased - W_base (out x in, or out x in x kh x kw
seen as out x in*kh*kw), is factorised by its SVD, D = U S V^T, and cut to rank r:
up = U_r S_r^(1/2), down = S_r^(1/2) V_r^T (the best rank-r approximation in Frobenius norm,
Eckart-Young). Its relative error, ||D - up down||_F / ||D||_F = sqrt(sum_{i>r} s_i^2 / sum_i s_i^2),
comes from the singular values. A rank at or above a layer's full rank reproduces it exactly.

Formats:
  * "diffusers" (peft keys, what `pipe.load_lora_weights(file)` reads natively):
    `unet.<module>.lora_A.weight` (down), `unet.<module>.lora_B.weight` (up), the same under
    `text_encoder.`; a changed bias is `<module>.lora_B.bias` (peft's lora_bias); no alphas, so
    each layer's scale is 1 (diffusers' convention when a file has none).
  * "kohya" (sd-scripts' names, which diffusers converts on load, and the UIs read):
    `lora_unet_<module with _ for .>.lora_down.weight` / `.lora_up.weight` / `.alpha` (= rank,
    scale 1), `lora_te_` for the text encoder. Biases have no place in it and are left out.

Tensors a LoRA cannot carry (norm weights, embeddings, and biases in kohya's format) are left out
and listed with the size of their change, ||D||_F / ||W||_F.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["FORMATS", "LayerFit", "LoraExport", "factorize", "export_lora"]

FORMATS = ("diffusers", "kohya")
_KOHYA_PREFIX = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


@dataclass
class LayerFit:
    module: str          # "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    rank: int            # the rank written
    full_rank: int       # min(out, in * kh * kw)
    relative_error: float


@dataclass
class LoraExport:
    path: Path
    format: str
    layers: list[LayerFit] = field(default_factory=list)
    left_out: list[tuple[str, float]] = field(default_factory=list)   # (tensor, ||D|| / ||W||)
    bytes: int = 0

    def lines(self) -> list[str]:
        out = [f"  {f.module}  rank {f.rank}/{f.full_rank}  relative error {f.relative_error:.2e}" for f in self.layers]
        for name, size in self.left_out:
            out.append(f"  left out: {name} (no LoRA form in the {self.format} format; change {size:.2e} of the weight)")
        worst = max((f.relative_error for f in self.layers), default=0.0)
        out.append(f"wrote {self.path}: {len(self.layers)} layers, {self.bytes / 1e6:.2f} MB, {self.format} format, "
                   f"worst relative error {worst:.2e}" + (f", {len(self.left_out)} tensor(s) left out" if self.left_out else ""))
        return out


def factorize(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """(down, up, full_rank, relative_error) of the best rank-`rank` approximation of `delta`
    (2-D: Linear; 4-D: Conv2d, down a kh x kw conv to `rank` channels, up a 1x1 conv)."""
    out_dim = delta.shape[0]
    matrix = delta.reshape(out_dim, -1).to(torch.float64)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    full = int(s.numel())
    r = max(1, min(rank, full))
    total = float((s ** 2).sum())
    error = math.sqrt(float((s[r:] ** 2).sum()) / total) if total > 0 else 0.0
    root = s[:r].sqrt()
    up = u[:, :r] * root
    down = root[:, None] * vh[:r]
    if delta.dim() == 4:
        up = up.reshape(out_dim, r, 1, 1)
        down = down.reshape(r, *delta.shape[1:])
    return down.float(), up.float(), full, error


def _module_kinds(base_path: Path, component: str) -> dict[str, str]:
    """{module name: class name} of a base component, built on the meta device from its config."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        if component == "unet":
            from diffusers import UNet2DConditionModel
            model = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base_path / "unet"))
        else:
            from transformers import CLIPTextConfig, CLIPTextModel
            model = CLIPTextModel(CLIPTextConfig.from_pretrained(base_path / "text_encoder"))
    return {name: type(module).__name__ for name, module in model.named_modules()}


def export_lora(erasure_dir: str | Path, out_file: str | Path, rank: int, fmt: str = "diffusers",
                dtype: str | None = None) -> LoraExport:
    """Write the erasure at `erasure_dir` as a LoRA file of rank `rank` (per layer, at most its
    full rank) in `fmt` ("diffusers" or "kohya"), stored in `dtype` (float32, float16, bfloat16;
    default: the erasure's own dtype)."""
    from .erasure_files import (SAVE_DTYPES, canonical_key, erasure_tensors, hash_tensors, read_base_tensors,
                                read_manifest)
    from .files import save_tensors
    from .model_ref import manifest_base, resolve_model

    if fmt not in FORMATS:
        raise UserError(f"unknown LoRA format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if rank < 1:
        raise UserError(f"--rank must be at least 1 (got {rank})")
    if dtype is not None and dtype not in SAVE_DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of {', '.join(SAVE_DTYPES)}")
    out = Path(out_file)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: a LoRA file is written as .safetensors; give --out NAME.safetensors")
    if out.exists():
        raise UserError(f"{out} exists; choose a new --out")
    erasure_dir = Path(erasure_dir)
    manifest = read_manifest(erasure_dir)
    if (manifest.get("sampling") or {}).get("one_step"):
        raise UserError(f"{erasure_dir} is a one-step generator (SFD); a LoRA on its base would not sample it in one "
                        "step: use erasure export for a full folder")
    erased = erasure_tensors(erasure_dir)
    base_path = resolve_model(manifest_base(erasure_dir, manifest))
    base = read_base_tensors(base_path, list(erased))
    missing = sorted(set(erased) - set(base))
    if missing:
        raise UserError(f"the base model {base_path} has no {missing[0]} (and {len(missing) - 1} more); export on the "
                        f"base this erasure was trained on ({manifest['base_model']})")
    if manifest.get("base_hash") and hash_tensors(base) != manifest["base_hash"]:
        raise UserError(f"the base model at {base_path} differs from the one this erasure was trained on; a LoRA of the "
                        "difference would be wrong: export on that base")
    kinds = {c: _module_kinds(base_path, c) for c in sorted({k.split(".", 1)[0] for k in erased})}
    store = SAVE_DTYPES[dtype] if dtype else next(iter(erased.values())).dtype
    result = LoraExport(out, fmt)
    tensors: dict[str, torch.Tensor] = {}
    deltas = {k: erased[k].to(torch.float64) - base[k].to(torch.float64) for k in sorted(erased)}

    def lora_kind(component: str, module: str, delta: torch.Tensor) -> bool:
        kind = kinds[component].get(module, "")
        return kind in ("Linear", "LoRACompatibleLinear") or (kind in ("Conv2d", "LoRACompatibleConv") and delta.dim() == 4)

    # the layers that get factors: a bias rides on its layer's lora_B, so it needs them
    factored = {k.removesuffix(".weight") for k, d in deltas.items() if k.endswith(".weight") and bool(d.any())
                and lora_kind(k.split(".", 1)[0], k.split(".", 1)[1].removesuffix(".weight"), d)}
    for key, delta in deltas.items():
        component, name = key.split(".", 1)
        module, _, param = name.rpartition(".")
        if not bool(delta.any()):
            continue
        # the text encoder's layers under the names its files have carried since transformers 4
        # ("text_model.encoder..."), which diffusers and kohya's tools read whatever transformers runs
        written = canonical_key(f"{component}.{module}").split(".", 1)[1]
        written = f"text_model.{written}" if component == "text_encoder" else written
        if param == "weight" and f"{component}.{module}" in factored:
            down, up, full, error = factorize(delta, rank)
            if fmt == "diffusers":
                tensors[f"{component}.{written}.lora_A.weight"] = down
                tensors[f"{component}.{written}.lora_B.weight"] = up
            else:
                stem = _KOHYA_PREFIX[component] + written.replace(".", "_")
                tensors[f"{stem}.lora_down.weight"] = down
                tensors[f"{stem}.lora_up.weight"] = up
                tensors[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]))
            result.layers.append(LayerFit(f"{component}.{module}", int(down.shape[0]), full, error))
        elif param == "bias" and f"{component}.{module}" in factored and fmt == "diffusers":
            tensors[f"{component}.{written}.lora_B.bias"] = delta.float()
        else:
            size = float(delta.norm() / base[key].to(torch.float64).norm().clamp_min(1e-12))
            result.left_out.append((key, size))
    if not result.layers:
        raise UserError(f"{erasure_dir} changes no Linear or Conv2d weight; it has no LoRA form")
    # diffusers turns peft's lora_bias on for every layer of a file once one layer has a bias, and
    # leaves a layer without one uninitialised: give each the zero bias it stands for
    if any(k.endswith(".lora_B.bias") for k in tensors):
        for key in [k for k in tensors if k.endswith(".lora_B.weight")]:
            tensors.setdefault(key.removesuffix(".weight") + ".bias", torch.zeros(tensors[key].shape[0]))
    metadata = {"format": "pt", "erasure_format": fmt, "erasure_method": str(manifest["method"]),
                "erasure_concept": str(manifest.get("concept")), "base_model": str(manifest["base_model"]),
                "rank": str(rank), "erasure_manifest": json.dumps({k: manifest[k] for k in ("method", "concept", "base_hash")
                                                                   if k in manifest})}
    if fmt == "kohya":
        metadata.update({"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
    save_tensors(out, {k: v.to(store) for k, v in tensors.items()}, metadata=metadata)
    result.bytes = out.stat().st_size
    return result
