"""The demo without its UI: the base model and the erasures under `--erasures DIR`, input checks,
the side-by-side comparison, and training jobs submitted to the queue (erasure/demo/jobs.py).

What a model's images mean (the verdict under each, whether one is blurred), the example prompts
and the concepts offered come from its world (`erasure.worlds.world_for`); the demo never asks
which model it serves. Tests drive `Demo` without a browser; erasure/demo/app.py puts the Gradio
UI on it.
"""
from __future__ import annotations

import copy
import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFilter

from ..config import EraseConfig
from ..erasure_files import CONFIG_NAME, is_erasure_dir, read_manifest
from ..errors import UserError
from ..model_ref import ModelRef, resolve
from ..pipelines import load_pipeline
from ..registry import get_method
from ..worlds import world_for
from .jobs import Job, TrainingQueue

BASE = "base"  # the pipeline cache's key for the base model


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a shared demo."""
    max_images: int = 4               # images per side per request
    max_steps: int = 50               # sampling steps
    max_train_steps: int = 1000       # training steps of one erasure
    max_waiting_jobs: int = 4         # training jobs queued behind the running one
    concurrent_generations: int = 4   # Compare requests served at once (the rest wait in Gradio's queue)
    max_prompt_chars: int = 1000      # cut before tokenizing; the token limit (77) applies after


# ----------------------------------------------------------------------------- erasures on disk
@dataclass
class ErasureInfo:
    name: str                   # folder relative to the erasures folder
    path: Path
    manifest: dict | None       # None when it could not be read
    error: str = ""
    size: int = 0               # bytes

    def row(self) -> list[str]:
        m = self.manifest or {}
        return [self.name, m.get("method", "?"), m.get("concept", "?"), m.get("base_model", "?"),
                m.get("created", "?").replace("T", " "), f"{self.size / 1e6:.1f} MB", self.error or "ok"]


TABLE_HEADERS = ["name", "method", "concept", "base model", "created", "size", "status"]


def find_erasures(root: Path) -> list[ErasureInfo]:
    """Every erasure folder up to three levels under `root`, by name; one whose manifest cannot be
    read is listed with the error. Hidden folders (a training run's temp folder) are skipped."""
    found = []
    for depth in ("*", "*/*", "*/*/*"):
        for cfg in root.glob(f"{depth}/{CONFIG_NAME}"):
            folder = cfg.parent
            name = folder.relative_to(root).as_posix()
            if any(part.startswith(".") for part in name.split("/")):
                continue
            try:
                manifest, error = read_manifest(folder), ""
            except UserError as e:
                manifest, error = None, str(e).split(";")[0].replace(str(folder), name)
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            found.append(ErasureInfo(name, folder, manifest, error, size))
    return sorted(found, key=lambda e: e.name)


def resolve_erasure(root: Path, name: str | None) -> Path:
    """The erasure folder `name` (relative to `root`, or a path inside it), checked: inside
    `root` (symlinks followed), present, with a readable manifest."""
    name = (name or "").strip()
    if not name:
        raise UserError("choose an erasure (the Erase tab trains one)")
    path = Path(name).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UserError(f"'{name}' is outside the erasures folder {root}; only erasures under it can be loaded")
    if not path.is_dir():
        raise UserError(f"no erasure folder '{name}' under {root}")
    try:
        read_manifest(path)
    except UserError as e:  # the message names the absolute path; the user typed a name
        raise UserError(str(e).replace(str(path), name)) from None
    return path


# ----------------------------------------------------------------------------- showing
def show(image: torch.Tensor, blur: bool = False, min_size: int = 256) -> Image.Image:
    """(3, H, W) in [0, 1] -> a PIL image at least `min_size` wide (a small model's images
    enlarged without smoothing); `blur` pixelates then blurs it beyond recognition."""
    pil = Image.fromarray((image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy())
    if blur:
        pil = pil.resize((16, 16), Image.BILINEAR).resize(pil.size, Image.NEAREST).filter(ImageFilter.GaussianBlur(8))
    scale = max(1, -(-min_size // pil.width))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def _private(pipe):
    """The same weights with a scheduler of its own: diffusers schedulers keep per-call state
    (the timesteps), so requests served at once must not share one."""
    fresh = type(pipe)(**{**pipe.components, "scheduler": copy.deepcopy(pipe.scheduler)}, requires_safety_checker=False)
    fresh.erasure_manifest = getattr(pipe, "erasure_manifest", None)
    fresh.set_progress_bar_config(disable=True)
    return fresh


def _number(value, name: str, low: float, high: float, whole: bool = True) -> float:
    """`value` (from a UI number box) checked to lie in [low, high], else a one-line UserError."""
    if value is None or value == "":
        raise UserError(f"{name} is empty; give a number from {low} to {high}")
    try:
        number = float(value)
        ok = low <= number <= high and (number.is_integer() or not whole)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"{name} must be a {'whole ' if whole else ''}number from {low} to {high} on this demo "
                        f"(got {value})")
    return number


@dataclass
class Side:
    """One model's half of a comparison: images drawn with seeds seed, seed + 1, ..."""
    label: str
    seed: int
    images: list[tuple[Image.Image, str]]   # (shown image, verdict)

    def verdicts(self) -> str:
        return "\n".join(f"- seed {self.seed + k}: {v}" for k, (_, v) in enumerate(self.images))


# ----------------------------------------------------------------------------- the demo's logic
class Demo:
    """The demo without its UI: model loading, input checks, comparison, training, listing."""

    def __init__(self, model: str = "minisd", erasures_dir: str | Path = "erasures", limits: Limits | None = None,
                 device: str | None = None) -> None:
        self.model, self.device, self.limits = str(model), device, limits or Limits()
        given = Path(self.model).expanduser()
        if given.is_dir() and is_erasure_dir(given):
            raise UserError(f"{model} is an erasure; --model takes its base model (e.g. minisd), and --erasures the "
                            "folder that holds erasures")
        self.ref = resolve(self.model)  # a wrong --model fails here, before the UI starts
        self.base_dir = self.ref.base_path
        self.world = world_for(self.ref)
        self.root = Path(erasures_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sampling = dict(self.ref.sampling)
        self._pipes: dict[str, object] = {}
        self._load_lock = threading.Lock()
        self.tokenizer = self.pipeline().tokenizer
        self.queue = TrainingQueue(self.root, self.limits.max_waiting_jobs)

    # models
    def pipeline(self, ref: ModelRef | None = None, keep: int = 2):
        """The base model's pipeline (no `ref`) or an erasure's, loaded once (the base and the
        `keep` most recently used erasures stay), with a scheduler of its own for this request."""
        key = BASE if ref is None else f"{ref.path}@{(ref.manifest or {}).get('created')}"  # retrained: reloaded
        with self._load_lock:
            if key not in self._pipes:
                self._pipes[key] = load_pipeline(self.ref if ref is None else ref, device=self.device)
                for old in [k for k in self._pipes if k not in (BASE, key)][:-keep or None]:
                    del self._pipes[old]
            self._pipes[key] = self._pipes.pop(key)  # most recently used last
            return _private(self._pipes[key])

    def lookup(self, name: str | None) -> ModelRef:
        """An erasure of this demo's base model under the erasures folder, resolved (its manifest,
        its sampling)."""
        ref = resolve(resolve_erasure(self.root, name))
        if ref.base_path.resolve() != self.base_dir.resolve():
            base = ref.manifest["base_model"]
            raise UserError(f"'{name}' was trained on {base}, but this demo serves {self.model}; start it with --model {base}")
        return ref

    def erasures(self) -> list[ErasureInfo]:
        return find_erasures(self.root)

    def concept_of(self, name: str | None) -> str | None:
        """The concept erasure `name` erased, or None when it cannot be loaded."""
        try:
            return self.lookup(name).manifest["concept"]
        except UserError:
            return None

    def examples(self, name: str | None) -> list[list[str]]:
        """[prompt, what the erasure should do to it] rows for erasure `name` (the world's examples)."""
        erase, keep = self.world.example_prompts(self.concept_of(name))
        return [[p, "should change"] for p in erase] + [[p, "should stay"] for p in keep]

    # inputs
    def check_prompt(self, prompt: str | None) -> tuple[str, str]:
        """The prompt to use and a notice: empty is refused; past the text encoder's token limit
        it is cut there (the pipeline would cut it silently)."""
        prompt = " ".join((prompt or "").split())[:self.limits.max_prompt_chars]
        if not prompt:
            raise UserError("the prompt is empty; type what to draw, e.g. 'a red circle'")
        limit = self.tokenizer.model_max_length
        ids = self.tokenizer(prompt, truncation=False, verbose=False).input_ids
        if len(ids) <= limit:
            return prompt, ""
        prompt = self.tokenizer.decode(ids[1:limit - 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return prompt, f"The prompt was cut to the text encoder's limit of {limit} tokens: \"{prompt}\""

    def check_concepts(self, concept: str) -> None:
        """A world that offers a menu of concepts draws only those: anything else is refused now."""
        choices = self.world.concept_choices()
        if not choices:
            return
        unknown = [c.strip() for c in concept.split(",") if c.strip().lower() not in set(choices)]
        if unknown:
            title = self.world.title
            raise UserError(f"{title} does not know '{unknown[0]}'; it draws {', '.join(sorted(choices))}")

    # compare
    @torch.inference_mode()
    def _draw(self, pipe, prompt: str, seed: int, n: int, sampling: dict) -> list[tuple[Image.Image, str]]:
        generators = [torch.Generator().manual_seed(seed + k) for k in range(n)]
        images = pipe([prompt] * n, generator=generators, output_type="pt", **sampling).images.float().cpu()
        return [(show(img, blur), verdict) for img, (verdict, blur) in zip(images, self.world.verdicts(images))]

    def compare(self, prompt: str | None, erasure_name: str | None, seed=0, steps=None, guidance=None,
                n_images=1) -> tuple[Side, Side, str]:
        """(base side, erased side, notice): both models draw `prompt` with seeds seed, seed+1, ..."""
        lim = self.limits
        prompt, notice = self.check_prompt(prompt)
        steps = int(_number(self.sampling["num_inference_steps"] if steps is None else steps, "steps", 1, lim.max_steps))
        n = int(_number(n_images, "images", 1, lim.max_images))
        seed = int(_number(seed, "seed", 0, 2**31 - 1))
        guidance = _number(self.sampling["guidance_scale"] if guidance is None else guidance, "guidance", 0, 30, whole=False)
        ref = self.lookup(erasure_name)
        sampling = {"num_inference_steps": steps, "guidance_scale": guidance}
        erased_sampling = sampling
        if ref.one_step:  # a one-step generator (SFD)
            erased_sampling = dict(ref.sampling)
            notice += (" " if notice else "") + "This erasure is a one-step generator: sampled in 1 step, guidance 1."
        base = Side(f"Base model ({self.model})", seed, self._draw(self.pipeline(), prompt, seed, n, sampling))
        erased = Side(f"Erased: {ref.manifest['concept']} ({ref.manifest['method']}, {erasure_name})", seed,
                      self._draw(self.pipeline(ref), prompt, seed, n, erased_sampling))
        return base, erased, notice

    # erase
    def submit(self, concept: str | None, method: str | None, anchor: str = "", steps=None, name: str = "") -> Job:
        """Queue a training job (checked now, so a mistake is reported before it waits)."""
        concept = (concept or "").strip()
        method = (method or "").strip()
        spec = get_method(method)
        if not concept:
            raise UserError("the concept is empty; say what to erase, e.g. circle")
        self.check_concepts(concept)
        settings = {"concept": concept, "method": spec.name, "anchor": (anchor or "").strip(),
                    "base_model": self.model, "checkpoint_every": 0}
        if self.device:
            settings["device"] = self.device
        if steps not in (None, "", 0):
            settings["steps"] = int(_number(steps, "training steps", 1, self.limits.max_train_steps))
        config = EraseConfig.from_dict(settings)  # every other setting checked now
        if config.steps > self.limits.max_train_steps:
            raise UserError(f"{spec.name} defaults to {config.steps} steps, over this demo's {self.limits.max_train_steps}; "
                            "give fewer steps")
        name = (name or "").strip()
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"'{name}' is not a plain folder name; use letters, digits, '.', '_' and '-'")
        if not name:  # method-concept, numbered when taken
            stem = re.sub(r"[^a-z0-9]+", "-", f"{spec.name}-{concept}".lower()).strip("-")
            candidates = itertools.chain([stem], (f"{stem}-{k}" for k in itertools.count(2)))
            name = next(n for n in candidates if not self.queue.taken(n))
        return self.queue.submit(name, settings)

    def describe_method(self, method: str) -> str:
        spec = get_method(method)
        cfg = spec.default_config(base_model=self.model)
        return f"**{spec.name}**: {spec.description}. Trains {cfg.target}; default {cfg.steps} steps, lr {cfg.lr:g}."
