"""A model reference, resolved once: what the string a user passes as `--model` names.

    ref = resolve("out/no-circle")      # an erasure folder
    ref.base_path, ref.manifest, ref.one_step, ref.sampling, ref.cache_key

A reference is the embedded MiniSD ("minisd"), a local Stable Diffusion folder, a hub id already
in the local Hugging Face cache (never downloaded), or an erasure folder (manifest + changed
tensors, whose manifest names its base). Everything below the CLI takes a `ModelRef` (or a string
it resolves once) instead of re-reading the string: the base model folder, whether it is an
erasure and of which concept, whether it samples in one step (an SFD erasure, or a folder
exported from one), the sampling settings it asks for, and the key its images are cached under.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

# named models shipped inside the package: name -> folder
MINISD_NAME = "minisd"
NAMED_MODELS = {MINISD_NAME: Path(__file__).parent / "worlds" / "mini" / "weights" / "minisd"}
MINISD_PATH = NAMED_MODELS[MINISD_NAME]
SD_COMPONENTS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")

# Sampling settings a model folder asks for (`erasure_sampling.json`: MiniSD ships one, an exported
# one-step generator gets one); a folder without it samples as Stable Diffusion does.
SAMPLING_FILE = "erasure_sampling.json"
SD_SAMPLING = {"num_inference_steps": 50, "guidance_scale": 7.5}
# A one-step generator (an SFD erasure) samples in one UNet call without classifier-free guidance:
# the guidance of its teacher is distilled into it (erasure/pipelines/one_step.py).
ONE_STEP_SAMPLING = {"num_inference_steps": 1, "guidance_scale": 1.0}


def _check_sd_folder(path: Path) -> Path:
    if not (path / "model_index.json").exists():
        raise UserError(f"{path} is not a diffusers Stable Diffusion folder (no model_index.json); "
                        "pass a folder saved by StableDiffusionPipeline.save_pretrained, or --model minisd")
    missing = [c for c in SD_COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise UserError(f"{path} lacks the Stable Diffusion part(s) {', '.join(missing)}; "
                        "a base model needs unet/, text_encoder/, tokenizer/, vae/ and scheduler/")
    from .files import PICKLE_SUFFIXES
    for component in ("unet", "text_encoder", "vae"):
        if not any((path / component).glob("*.safetensors")):
            pickles = sorted(f.name for f in (path / component).iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
            found = f"only the pickle file(s) {', '.join(pickles)}" if pickles else "no weight file"
            raise UserError(f"{path / component} has {found}; erasure loads weights from safetensors only (unpickling "
                            f"runs code): re-save the model with save_pretrained(..., safe_serialization=True), or "
                            f"turn a fine-tune into an erasure with erasure import --allow-pickle")
    return path


def resolve_model(model: str | os.PathLike) -> Path:
    """The base model folder a name gives: a shipped model ('minisd') -> its folder; a local folder
    -> itself (checked); a hub id -> its snapshot in the local Hugging Face cache (offline only)."""
    name = str(model)
    if name.lower() in NAMED_MODELS:
        path = NAMED_MODELS[name.lower()]
        if not (path / "model_index.json").exists():
            raise UserError(f"the {name} weights are missing from {path}; reinstall erasure, or train them with "
                            "python -m erasure.worlds.mini.train")
        return path
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--model {name} is a file; pass a diffusers Stable Diffusion folder, an erasure folder or 'minisd'")
        return _check_sd_folder(path)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
            snapshot = Path(snapshot_download(name, local_files_only=True))
        except Exception:
            raise UserError(f"model '{name}' is neither a local folder nor in the local Hugging Face cache; erasure never "
                            "downloads: fetch it once where there is network, then pass its folder") from None
        return _check_sd_folder(snapshot)
    raise UserError(f"no model folder at '{name}'; pass a diffusers Stable Diffusion folder, an erasure folder or 'minisd'")


def default_sampling(path: str | os.PathLike) -> dict:
    """Steps and guidance a base model folder asks for in erasure_sampling.json, else Stable
    Diffusion's. Image size is left to the pipeline (unet.sample_size x the VAE factor)."""
    file = Path(path) / SAMPLING_FILE
    return json.loads(file.read_text()) if file.exists() else dict(SD_SAMPLING)


def _exported_one_step(path: Path) -> bool:
    config = path / "scheduler" / "scheduler_config.json"
    return config.exists() and json.loads(config.read_text()).get("_class_name") == "OneStepScheduler"


@dataclass(frozen=True)
class ModelRef:
    """A model as resolved once (see the module docstring)."""
    given: str                       # as the user wrote it
    path: Path                       # the folder it names: the erasure folder, or the base model folder
    base_path: Path                  # the base model folder behind it
    manifest: dict | None = None     # the erasure manifest; None for a base model
    one_step: bool = False           # samples in one UNet call, guidance 1
    sampling: dict = field(default_factory=dict)  # steps and guidance to sample it with

    @property
    def is_erasure(self) -> bool:
        return self.manifest is not None

    @property
    def concept(self) -> str | None:
        """The concept an erasure erased (one only; several, or a base model, give None)."""
        concept = (self.manifest or {}).get("concept")
        return concept if concept and "," not in concept else None

    @property
    def cache_key(self) -> str:
        """Identity for image caches: the resolved folder, and for an erasure the hash of its
        weights file (retraining into the same folder must not reuse stale images)."""
        from .erasure_files import WEIGHTS_NAME
        if self.is_erasure:
            ident = f"erasure:{self.path.resolve()}:{hashlib.sha256((self.path / WEIGHTS_NAME).read_bytes()).hexdigest()}"
        else:
            ident = f"base:{self.path.resolve()}"
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    @property
    def recorded_name(self) -> str:
        """How a result's harness names the model: a shipped model by its name, a folder by its
        absolute path (a replay from another directory finds it)."""
        return self.given if str(self.given).lower() in NAMED_MODELS else str(Path(self.path).resolve())

    def __str__(self) -> str:
        return self.given


def manifest_base(path: str | Path, manifest: dict) -> str:
    """The base model reference of the erasure folder `path`: a relative folder is read from the
    erasure folder, never from the current directory (a shared erasure must not pick up whatever
    folder of that name the loader stands in); a shipped model by name; a hub id in the local
    Hugging Face cache only; failing those, the absolute folder it was trained from
    (`base_model_path`), if it is still there."""
    base = str(manifest["base_model"])
    if base.lower() in NAMED_MODELS or Path(base).expanduser().is_absolute():
        return base
    beside = Path(path) / base
    if beside.exists():
        return str(beside)
    if base.count("/") == 1 and not base.startswith((".", "~")):
        try:
            from huggingface_hub import snapshot_download
            return snapshot_download(base, local_files_only=True)
        except Exception:
            pass
    trained_from = manifest.get("base_model_path")
    if trained_from and Path(trained_from).is_absolute() and Path(trained_from).exists():
        return str(trained_from)
    raise UserError(f"{path}: its base model '{base}' is neither beside the erasure folder ({beside}) nor a cached hub "
                    "model; pass the base explicitly (--base-model / ErasedPipeline.from_pretrained(..., base_model=FOLDER))")


def resolve(model: "str | os.PathLike | ModelRef") -> ModelRef:
    """Resolve `model` once (a ModelRef is returned as it is)."""
    if isinstance(model, ModelRef):
        return model
    from .erasure_files import is_erasure_dir, read_manifest
    given = str(model)
    path = Path(given)
    if path.is_dir() and is_erasure_dir(path):
        manifest = read_manifest(path)
        base = resolve_model(manifest_base(path, manifest))
        one_step = bool((manifest.get("sampling") or {}).get("one_step"))
        sampling = default_sampling(base)
        return ModelRef(given, path, base, manifest, one_step, {**sampling, **ONE_STEP_SAMPLING} if one_step else sampling)
    base = resolve_model(given)
    one_step = _exported_one_step(base)
    sampling = default_sampling(base)
    return ModelRef(given, base, base, None, one_step, {**sampling, **ONE_STEP_SAMPLING} if one_step else sampling)


def is_one_step(model: "str | os.PathLike | ModelRef") -> bool:
    """Whether `model` is a one-step generator: an erasure whose manifest says so, or a folder
    whose scheduler is erasure's OneStepScheduler (an exported one)."""
    if isinstance(model, ModelRef):
        return model.one_step
    from .erasure_files import is_erasure_dir, read_manifest
    path = Path(str(model))
    if path.is_dir() and is_erasure_dir(path):
        return bool((read_manifest(path).get("sampling") or {}).get("one_step"))
    return path.is_dir() and _exported_one_step(path)


def model_sampling(model: "str | os.PathLike | ModelRef") -> dict:
    """Steps and guidance to sample `model` with: a one-step generator's (1 step, guidance 1),
    else its base model's (`default_sampling`)."""
    return dict(resolve(model).sampling)


def base_of(model: "str | os.PathLike | ModelRef") -> Path:
    """The base model folder behind `model`: itself, or the base an erasure folder names."""
    return resolve(model).base_path
