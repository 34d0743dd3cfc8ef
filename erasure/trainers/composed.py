"""AdvUnlearn's text encoder with an ESD-x UNet, shipped as one erasure (AdvUnlearn's plug-and-play).

A composed erasure: each part trained by its own method against the base, the two sets of
changed tensors shipped as one erasure.

The recipe is the one AdvUnlearn's paper proposes for its robust text encoder (Zhang et al.,
NeurIPS 2024, Sec. 5 "plug-and-play": the adversarially trained text encoder is attached to other
erased UNets, their Tab. 6): the text encoder no longer maps the concept's words (nor soft
prompts near them: its inner attack) to the concept, and the UNet no longer draws the concept
from the embeddings that still carry it. An attack has to get through both.

    stage 1: `unet_method` (default esd-x, cross-attention, ESD eq. 6) -> unet.* tensors
    stage 2: `text_method` (default advunlearn, the text encoder, its eq. 5) -> text_encoder.* tensors
    erasure: the union (the parts touch disjoint tensors; a clash is refused)

Each part is trained with its method's defaults for the base model's world (`erasure ls`), in
its own folder `OUT/parts/<method>/` with its own checkpoints, so an interrupted run resumes in
the part it stopped in. The composed config's own optimisation fields (steps, lr, ...) are not
used: the parts' are. Where we differ from the paper: the paper attaches its released text
encoder to separately released UNet erasures; here both parts are trained from the same base by
this package, under one seed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import EraseConfig, doc
from ..errors import UserError
from ..registry import get_method, register_method

PARTS_DIR = "parts"


@dataclass
class ComposedConfig(EraseConfig):
    unet_method: str = doc("the method whose UNet tensors the erasure keeps (trained first)", default="esd-x")
    text_method: str = doc("the method whose text-encoder tensors the erasure keeps (trained second)",
                           default="advunlearn")
    joint: bool = doc("train the text part against the UNet part's erased UNet (its targets still from the base "
                      "UNet), so its inner attack searches the composed model", default=False)
    part_settings: str = doc("settings of the parts over their defaults: METHOD.FIELD=VALUE, comma separated "
                             "(e.g. esd-x.steps=200,advunlearn.lr=1e-4)", default="")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unet_method == self.text_method:
            raise UserError("--unet-method and --text-method must be two different methods")
        self.parts()  # a malformed --part-settings fails here, before any training

    def ls_summary(self) -> str:
        """What `erasure ls` says it trains: the parts, each with its own defaults."""
        return (f"trains {self.unet_method}'s UNet tensors, then {self.text_method}'s text-encoder tensors, each "
                f"with its own defaults (--joint: the text part against the erased UNet)")

    def parts(self) -> dict[str, dict[str, str]]:
        """--part-settings as {method: {field: value text}}."""
        out: dict[str, dict[str, str]] = {self.unet_method: {}, self.text_method: {}}
        for item in filter(None, (s.strip() for s in self.part_settings.split(","))):
            key, sep, value = item.partition("=")
            method, dot, name = key.strip().rpartition(".")
            if not sep or not dot or method not in out:
                raise UserError(f"--part-settings takes {self.unet_method}.FIELD=VALUE or {self.text_method}.FIELD=VALUE, "
                                f"got '{item}'")
            out[method][name.replace("-", "_")] = value.strip()
        return out


class ComposedTrainer:
    """Trains each part with its own trainer, then writes their union as the erasure."""

    config_cls = ComposedConfig
    data_parallel = True

    def __init__(self, config: ComposedConfig, pipe=None, cache_dir: str | Path | None = None,
                 data_parallel: bool | None = None) -> None:
        from .. import distributed
        from ..pipelines.loading import pick_device
        config.check_run()
        self.config, self.cache_dir, self.data_parallel_run = config, cache_dir, data_parallel
        launched = distributed.processes() > 1 and data_parallel in (None, True)
        self.rank = distributed.rank() if launched else 0
        self.device = pick_device(config.device)
        for method in (config.unet_method, config.text_method):  # unknown settings fail before any training
            self.part_config(method)

    def part_config(self, method: str) -> EraseConfig:
        """The part's config: its method's defaults for this world, this run's concept, base,
        seed, precision and device."""
        c = self.config
        shared = {k: getattr(c, k) for k in ("concept", "concept_prompts", "base_model", "seed", "dtype", "device",
                                             "attention", "gradient_checkpointing", "save_dtype", "checkpoint_every")}
        import dataclasses
        import yaml
        own = {k: yaml.safe_load(v) for k, v in self.config.parts()[method].items()}
        known = {f.name for f in dataclasses.fields(get_method(method).config_cls)}
        unknown = sorted(set(own) - known)
        if unknown:
            raise UserError(f"--part-settings: {method} has no setting {unknown[0]}; see erasure train --method {method} --help")
        return EraseConfig.from_dict({**shared, **own, "method": method})

    @staticmethod
    def put_unet_part(trainer, tensors: dict) -> None:
        """The joint recipe: the text part's trainer predicts with the erased UNet, and keeps the
        base UNet (a frozen copy) for its targets and its retain term."""
        import torch
        if getattr(trainer, "frozen_unet", None) is None or trainer.frozen_unet is not trainer.unet:
            raise UserError(f"--joint needs a text method whose UNet never trains (advunlearn); "
                            f"{trainer.config.method} keeps no separate base UNet")
        trainer.frozen_unet = trainer.frozen_copy(trainer.unet)
        params = dict(trainer.unet.named_parameters())
        with torch.no_grad():
            for key, value in tensors.items():
                if key.startswith("unet."):
                    p = params[key.removeprefix("unet.")]
                    p.copy_(value.to(p.device, p.dtype))

    def train(self, out_dir: str | Path, resume: bool = False, stop_after: int | None = None, callback=None) -> Path:
        from ..erasure_files import CONFIG_NAME, WEIGHTS_NAME, base_tensors, hash_tensors, save_erasure
        from ..files import load_tensors
        from ..model_ref import resolve_model
        from ..pipelines import load_pipeline
        from .base import checkpoint_in

        out = Path(out_dir)
        tensors, manifests = {}, {}
        for role, method in (("unet", self.config.unet_method), ("text_encoder", self.config.text_method)):
            part = out / PARTS_DIR / method
            if not (part / CONFIG_NAME).exists():
                trainer = get_method(method).trainer_cls(self.part_config(method), cache_dir=self.cache_dir,
                                                         data_parallel=self.data_parallel_run)
                if role == "text_encoder" and self.config.joint:
                    self.put_unet_part(trainer, tensors)
                trainer.train(part, resume=resume and checkpoint_in(part) is not None, stop_after=stop_after,
                              callback=callback)
                if not (part / CONFIG_NAME).exists():  # stopped early (stop_after): checkpointed, resumable
                    return out
            manifest = json.loads((part / CONFIG_NAME).read_text())
            mine = {k: v for k, v in load_tensors(part / WEIGHTS_NAME).items() if k.startswith(role + ".")}
            if not mine:
                raise UserError(f"{method} changed no {role} tensor, so it cannot be the {role} part; "
                                f"choose another --{'unet' if role == 'unet' else 'text'}-method")
            tensors |= mine
            manifests[method] = {k: manifest[k] for k in ("method", "n_changed_parameters", "base_hash")}
        if self.rank != 0:  # the parts are complete in every process; the main one writes the union
            return out
        base_path = resolve_model(self.config.base_model)
        pipe = load_pipeline(base_path)
        base = base_tensors(pipe, list(tensors))
        save_erasure(out, self.config, tensors, hash_tensors(base), base_path, extra={"parts": manifests},
                     base_dtypes={k: v.dtype for k, v in tensors.items()})
        return out


register_method("adv-esd", ComposedConfig, ComposedTrainer)
