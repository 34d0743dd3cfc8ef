"""Which weights a method trains: named selections in one table.

A preset is a predicate over (component, parameter name); `select_parameters` returns the
matching parameters keyed "unet.<name>" / "text_encoder.<name>", the same keys the erasure file
stores. ESD's presets follow the paper's code (see docs/esd.md):
  esd-x         cross-attention (attn2) only
  esd-u         everything but attn2; like the original CompVis code, also not the time
                embedding and the output block (its `out.` GroupNorm and conv: diffusers'
                conv_norm_out and conv_out; the newer diffusers script keeps those)
  esd-all       every UNet weight
  unet          the same, the name SalUn uses (its saliency mask then picks among them)
  esd-x-strict  only attn2.to_k and attn2.to_v (keys and values of the text pathway)
  attn2-kv      same tensors as esd-x-strict, the name DoCo uses
  text-encoder  the CLIP text encoder's transformer layers and final norm, embeddings frozen
                (AdvUnlearn's default)
"""
from __future__ import annotations

from typing import Callable

import torch

from .errors import UserError

Predicate = Callable[[str, str], bool]


def _unet(rule: Callable[[str], bool]) -> Predicate:
    return lambda component, name: component == "unet" and rule(name)


TARGETS: dict[str, Predicate] = {
    "esd-x": _unet(lambda n: ".attn2." in n),
    "esd-u": _unet(lambda n: ".attn2." not in n and not n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))),
    "esd-all": _unet(lambda n: True),
    "unet": _unet(lambda n: True),
    "esd-x-strict": _unet(lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n),
    "attn2-kv": _unet(lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n),
    "text-encoder": lambda c, n: c == "text_encoder" and ".embeddings." not in f".{n}",
}


def target_names() -> list[str]:
    return sorted(TARGETS)


def select_parameters(models: dict[str, torch.nn.Module], target: str) -> dict[str, torch.nn.Parameter]:
    """{"unet.down_blocks...weight": param, ...} for the parameters `target` trains."""
    if target not in TARGETS:
        raise UserError(f"unknown weight preset '{target}'; choose one of: {', '.join(target_names())}")
    rule = TARGETS[target]
    chosen = {f"{component}.{name}": p for component, model in models.items()
              for name, p in model.named_parameters() if rule(component, name)}
    if not chosen:
        raise UserError(f"weight preset '{target}' selects no parameter of this model; pick another --target")
    return chosen
