"""Import an erasure made elsewhere into an erasure folder, so `eval`, `attack` and `bench` judge it
under this package's harness.

    erasure import esd-nudity-from-nudity-esdx.safetensors --base CompVis/stable-diffusion-v1-4 --out esd-x-nudity

Source forms (`detect_form` says which one a path is):
- `parameters`: one safetensors file of trained tensors under diffusers names. ESD's official
  `esd_sd.py` writes this (the trained UNet parameters of esd-x/-u/-all/-x-strict, unprefixed, in
  bfloat16, file `esd-<concept>-from-<concept>-<method>.safetensors`); a UNet-only checkpoint is
  the same form with every UNet tensor. Keys may also carry their component
  ("unet.<name>", "text_encoder.<name>", as our own erasure files do); unprefixed keys are matched
  against the base's UNet, then its text encoder.
- `text-encoder-folder`: a CLIPTextModel folder (config.json + model.safetensors), the form
  AdvUnlearn publishes its adversarially trained text encoders in.
- `unet-folder`: a UNet2DConditionModel folder (config.json + diffusion_pytorch_model.safetensors).
- `diffusers-folder`: a full fine-tuned Stable Diffusion folder (model_index.json); its UNet and
  text encoder are compared with the base's (the VAE is not part of an erasure).

A tensor is *changed* when it differs from the base's value cast to the source's dtype (a bfloat16
ESD file holds every weight it did not train as the base rounded to bfloat16: those are not
changes); changed tensors are stored in the source's dtype unless `dtype` says otherwise, so an
import loses nothing the source had. Every tensor must exist in the base with the same shape.

Pickle checkpoints (.pt, .pth, .bin, .ckpt) are refused: unpickling runs code. `allow_pickle=True`
(`--allow-pickle`) reads one through `torch.load(weights_only=True)` only (tensors and plain
containers; anything else is refused by torch), with a warning. The original CompVis/ldm layout
("model.diffusion_model.*") is refused with the diffusers conversion to run first.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .files import PICKLE_SUFFIXES, human_size, load_tensors

FORMS = ("parameters", "text-encoder-folder", "unet-folder", "diffusers-folder")
IMPORTED_METHOD = "imported"
# ESD's official esd_sd.py names its file esd-<concept>-from-<concept>-<esdx|esdu|esdall|esdxstrict>.safetensors
_ESD_NAME = re.compile(r"^esd-(?P<concept>.+?)-from-(?P<source>.+)-(?P<method>esd[a-z]*)$")
_LDM_PREFIXES = ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")


@dataclass
class ImportConfig:
    """What the manifest's `config` records for an imported erasure: where it came from."""
    concept: str | None
    base_model: str
    source: str
    source_form: str
    source_method: str | None = None   # what the source's own name says it is (ESD's file names)
    method: str = IMPORTED_METHOD

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImportResult:
    out: Path
    form: str
    changed: dict[str, tuple[int, ...]]       # key -> shape
    unchanged: list[str] = field(default_factory=list)
    size: int = 0

    def lines(self) -> list[str]:
        per = {c: sum(1 for k in self.changed if k.startswith(c + ".")) for c in ("unet", "text_encoder")}
        return [f"read a {self.form} source: {len(self.changed)} changed tensor(s) (unet {per['unet']}, text encoder "
                f"{per['text_encoder']}), {len(self.unchanged)} equal to the base and left out",
                f"wrote the erasure folder {self.out} ({human_size(self.size)})"]


def _refuse_pickle(path: Path) -> None:
    raise UserError(f"{path} is a pickle checkpoint, which erasure does not load (unpickling runs code); convert it "
                    "to .safetensors, or pass --allow-pickle to read it with torch.load(weights_only=True)")


def _read_file(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            _refuse_pickle(path)
        warnings.warn(f"reading the pickle checkpoint {path} with torch.load(weights_only=True): only tensors and "
                      "plain containers are unpickled; prefer a safetensors copy", stacklevel=3)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses any other object: report it, never fall back
            raise UserError(f"{path} is not a plain tensor checkpoint ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'unreadable'}); it cannot be imported") from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise UserError(f"{path} holds a {type(data).__name__}, not a dict of named tensors; it cannot be imported")
        return {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path} is neither a .safetensors file nor a folder; erasure import reads safetensors "
                        "files and diffusers folders")
    return load_tensors(path)


def _read_folder(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from .erasure_files import safetensors_files
    files = safetensors_files(folder)
    if not files:
        pickles = sorted(f for f in folder.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if not pickles:
            raise UserError(f"{folder} holds no weight file (*.safetensors); it cannot be imported")
        if not allow_pickle:
            _refuse_pickle(pickles[0])
        files = pickles
    out: dict[str, torch.Tensor] = {}
    for file in files:
        for key, value in _read_file(file, allow_pickle).items():
            out.setdefault(key, value)
    return out


def detect_form(source: Path) -> str:
    """Which of `FORMS` the path is (a file is `parameters`; a folder by its config)."""
    if not source.exists():
        raise UserError(f"no file or folder at {source}; pass an erasure made elsewhere (safetensors file or folder)")
    if source.is_file():
        return "parameters"
    if (source / "model_index.json").exists():
        return "diffusers-folder"
    config = source / "config.json"
    if config.exists():
        try:
            data = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{config} is not valid JSON; re-save the model folder") from None
        data = data if isinstance(data, dict) else {}
        if data.get("_class_name") == "UNet2DConditionModel":
            return "unet-folder"
        if "CLIPTextModel" in (data.get("architectures") or []) or data.get("model_type") == "clip_text_model":
            return "text-encoder-folder"
        raise UserError(f"{source} is a model folder of another kind ({data.get('_class_name') or data.get('architectures')}); "
                        "import a UNet2DConditionModel, a CLIPTextModel or a Stable Diffusion folder")
    raise UserError(f"{source} is a folder without model_index.json or config.json; pass a diffusers folder, a "
                    "CLIPTextModel or UNet folder, or a safetensors file")


def _keyed(raw: dict[str, torch.Tensor], base_keys: dict[str, set[str]], source: Path) -> dict[str, torch.Tensor]:
    """A parameters file's keys as "<component>.<name>"."""
    if any(k.startswith(_LDM_PREFIXES) for k in raw):
        raise UserError(f"{source} is in the original CompVis/ldm layout (model.diffusion_model.*); convert it first: "
                        "StableDiffusionPipeline.from_single_file(FILE, config=BASE).save_pretrained(DIR), "
                        "then erasure import DIR")
    from .erasure_files import loaded_key
    out, unknown = {}, []
    for key, value in raw.items():
        key = loaded_key(key) if key.startswith("text_encoder.") else key
        component, _, name = key.partition(".")
        if component in base_keys and name in base_keys[component]:
            out[key] = value
        elif key in base_keys["unet"]:
            out[f"unet.{key}"] = value
        elif loaded_key(f"text_encoder.{key}").removeprefix("text_encoder.") in base_keys["text_encoder"]:
            out[loaded_key(f"text_encoder.{key}")] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:3]) + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else "")
        raise UserError(f"{source}: {len(unknown)} tensor name(s) are in neither the base's UNet nor its text encoder "
                        f"({shown}); import onto the base it was trained from, with diffusers names")
    return out


def read_source(source: str | Path, base_keys: dict[str, set[str]], allow_pickle: bool = False
                ) -> tuple[str, dict[str, torch.Tensor]]:
    """(form, tensors keyed "<component>.<name>", named as the installed libraries' loaded models
    name them) of an erasure made elsewhere."""
    from .erasure_files import loaded_key
    source = Path(source).expanduser()
    form = detect_form(source)
    if form == "parameters":
        return form, _keyed(_read_file(source, allow_pickle), base_keys, source)
    if form == "text-encoder-folder":
        return form, {loaded_key(f"text_encoder.{k}"): v for k, v in _read_folder(source, allow_pickle).items()}
    if form == "unet-folder":
        return form, {f"unet.{k}": v for k, v in _read_folder(source, allow_pickle).items()}
    tensors = {}
    for component in ("unet", "text_encoder"):
        if (source / component).is_dir():
            tensors.update({loaded_key(f"{component}.{k}"): v
                            for k, v in _read_folder(source / component, allow_pickle).items()})
    if not tensors:
        raise UserError(f"{source} has neither unet/ nor text_encoder/ weights; nothing to import")
    return form, tensors


def _base_key_names(base_path: Path) -> dict[str, set[str]]:
    from safetensors import safe_open

    from .erasure_files import component_files, loaded_key
    out = {}
    for component in ("unet", "text_encoder"):
        names: set[str] = set()
        for file in component_files(base_path, component):
            with safe_open(str(file), framework="pt") as handle:
                names.update(loaded_key(f"{component}.{n}").split(".", 1)[1] for n in handle.keys())
        if not names:
            raise UserError(f"the base {base_path} has no {component}/*.safetensors; erasure reads base models in "
                            "safetensors only (re-save it with save_pretrained(..., safe_serialization=True))")
        out[component] = names
    return out


def import_erasure(source: str | Path, base: str, out: str | Path, concept: str | None = None,
                   allow_pickle: bool = False, dtype: str | None = None) -> ImportResult:
    """Write the erasure folder `out` holding what `source` changes in the base model `base`."""
    from .erasure_files import WEIGHTS_NAME, hash_tensors, read_base_tensors, save_erasure
    from .model_ref import resolve_model

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    base_path = resolve_model(base)
    source_path = Path(source).expanduser()
    form, tensors = read_source(source_path, _base_key_names(base_path), allow_pickle)
    base_values = read_base_tensors(base_path, list(tensors))
    missing = sorted(set(tensors) - set(base_values))
    if missing:
        raise UserError(f"{source}: {len(missing)} tensor(s) are not in the base {base} ({', '.join(missing[:3])}); "
                        "import onto the base it was trained from")
    changed, unchanged, wrong = {}, [], []
    for key, value in sorted(tensors.items()):
        base_value = base_values[key]
        if tuple(value.shape) != tuple(base_value.shape):
            wrong.append(f"{key} (base {tuple(base_value.shape)} vs source {tuple(value.shape)})")
        elif not value.is_floating_point():
            if not torch.equal(value, base_value.to(value.dtype)):
                wrong.append(f"{key} ({str(value.dtype).removeprefix('torch.')}, not floating point)")
            else:
                unchanged.append(key)
        elif torch.equal(value, base_value.to(value.dtype)):
            unchanged.append(key)
        else:
            changed[key] = value
    if wrong:
        raise UserError(f"{source} does not fit the base {base} ({len(wrong)} tensor(s): {'; '.join(wrong[:4])}); "
                        "import onto the base it was trained from")
    if not changed:
        raise UserError(f"{source} changes nothing in the base {base}: every tensor equals the base's; "
                        "is it the right file or the right base?")
    bad = [k for k, v in changed.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise UserError(f"{source} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. {bad[0]}; "
                        "it is not a usable erasure")
    source_method = None
    match = _ESD_NAME.match(source_path.stem) if form == "parameters" else None
    if match:
        source_method = {"esdx": "esd-x", "esdu": "esd-u", "esdall": "esd-all", "esda": "esd-all",
                         "esdxstrict": "esd-x-strict"}.get(match["method"], match["method"])
        concept = concept or match["concept"].replace("_", " ")
    config = ImportConfig(concept=concept, base_model=str(base), source=str(source_path.resolve()), source_form=form,
                          source_method=source_method)
    base_hash = hash_tensors({k: base_values[k] for k in changed})
    # no base_dtypes: each changed tensor is stored in the source's dtype unless `dtype` is given
    save_erasure(out, config, changed, base_hash, base_path, dtype=dtype,
                 extra={"imported_from": {"source": str(source_path.resolve()), "form": form,
                                          "source_method": source_method}})
    return ImportResult(out, form, {k: tuple(v.shape) for k, v in changed.items()}, unchanged,
                        (out / WEIGHTS_NAME).stat().st_size)
