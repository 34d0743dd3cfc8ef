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
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageFilter

from ..config import EraseConfig
from ..erasure_files import CONFIG_NAME, MAX_MANIFEST_BYTES, WEIGHTS_NAME, is_erasure_dir, read_manifest
from ..errors import UserError
from ..files import PICKLE_SUFFIXES
from ..model_ref import NAMED_MODELS, ModelRef, resolve
from ..pipelines import load_pipeline
from ..registry import get_method
from ..worlds import world_for
from .jobs import Job, TrainingQueue

log = logging.getLogger("erasure.demo")
BASE = "base"  # the pipeline cache's key for the base model

# Caps on what a request may send, past the per-demo `Limits`: each keeps a bad value (typed, or
# sent through the API, where the UI's own limits do not apply) from costing more than a message.
MAX_GUIDANCE = 30               # classifier-free guidance; far past the useful range images are noise
MAX_SEED = 2**31 - 1            # seeds the UI's number box holds exactly
MAX_NAME_CHARS = 200            # an erasure's name, a method, a concept (or a comma-separated list of them)
MAX_PATH_CHARS = 1000           # an erasure folder typed as a path
RAW_PROMPT_FACTOR = 10          # a prompt is cut at this many times max_prompt_chars before its spaces are tidied
MAX_SHOWN_CHARS = 80            # a bad value quoted back in a message is cut here
PICKLE_WEIGHTS = tuple(f"erasure_model{suffix}" for suffix in PICKLE_SUFFIXES)  # listed, never loaded
ERASURE_FILES = (CONFIG_NAME, WEIGHTS_NAME, *PICKLE_WEIGHTS)  # a folder holding any of them is listed


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
    error: str = ""             # why it cannot be used here (one line); empty when it can
    size: int = 0               # bytes

    @property
    def label(self) -> str:
        """How the erasure menu names it: an unusable one carries its reason, so choosing it is
        never a surprise."""
        return f"{self.name} (unreadable: {self.error})" if self.error else self.name

    def row(self) -> list[str]:
        m = self.manifest or {}
        return [self.name, *(_shown(m.get(k, "?"), MAX_NAME_CHARS) for k in ("method", "concept", "base_model")),
                _shown(m.get("created", "?")).replace("T", " "), f"{self.size / 1e6:.1f} MB", self.error or "ok"]


TABLE_HEADERS = ["name", "method", "concept", "base model", "created", "size", "status"]


def _shown(value, limit: int = MAX_SHOWN_CHARS) -> str:
    """`value` as a message quotes it back: on one line, control characters escaped (a NUL
    is seen, not swallowed), cut at `limit` characters."""
    try:
        text = str(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        text = f"a {type(value).__name__} too long to show"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in " ".join(text[:4 * limit].split()))
    return text if len(text) <= limit else text[:limit] + "…"


def _reason(error: Exception) -> str:
    """What a listing shows of a UserError: its first clause (before the fix), on one line."""
    return _shown(str(error).split(";")[0], 300)


def read_erasure(root: Path, folder: Path) -> dict:
    """The manifest of erasure folder `folder`, after every check that needs no model loaded: inside
    `root` (symlinks followed); weights in safetensors, never a pickle; a manifest of bounded size
    that is a JSON object with the fields the demo shows; a weights file whose header is whole and
    lists the tensors the manifest does (no tensor read). Else a one-line UserError naming files
    relative to the folder, so that one damaged folder is reported, not loaded, and the listing
    and a request say the same. The base model is `check_base`'s."""
    cfg, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.resolve().is_relative_to(root.resolve()):
        raise UserError("it links outside the erasures folder; only erasures under it can be loaded")
    pickles = [p for p in PICKLE_WEIGHTS if (folder / p).exists()]
    if pickles and not weights.exists():
        raise UserError(f"its weights are a pickle file ({pickles[0]}), which the demo never loads; convert it to "
                        f"{WEIGHTS_NAME} (erasure import) or re-run erasure train")
    if not cfg.exists():
        if weights.exists():
            raise UserError(f"it has {WEIGHTS_NAME} but no {CONFIG_NAME}; the erasure is incomplete "
                            "(re-run erasure train)")
        raise UserError(f"it has no {CONFIG_NAME}; it is not an erasure folder (erasure train writes one)")
    for file in (cfg, weights):
        if file.exists() and not file.is_file():  # a FIFO or a device would block or never end
            raise UserError(f"{file.name} is not a regular file; re-run erasure train to rewrite the erasure")
    size = cfg.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise UserError(f"{CONFIG_NAME} is {size / 1e6:.0f} MB, far more than a manifest holds; it is not one "
                        "(re-run erasure train)")
    try:
        manifest = json.loads(cfg.read_bytes())
    except UnicodeDecodeError:
        raise UserError(f"{CONFIG_NAME} is corrupt (not UTF-8 text); re-run erasure train to rewrite it") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{CONFIG_NAME} is corrupt ({e.msg} at line {e.lineno}); re-run erasure train to rewrite it") \
            from None
    if not isinstance(manifest, dict):
        kind = {list: "a JSON list", str: "a JSON string", bool: "a JSON boolean", type(None): "JSON null"}.get(
            type(manifest), "a JSON number")
        raise UserError(f"{CONFIG_NAME} holds {kind}, not an erasure manifest (an object); re-run erasure train")
    try:
        manifest = read_manifest(folder)  # the package's own checks: format, fields, the weights file there
    except UserError as e:  # it names the absolute paths; the listing names the folder
        raise UserError(str(e).replace(str(cfg), CONFIG_NAME).replace(str(folder), "the folder")) from None
    for key in ("method", "concept", "base_model"):
        if not isinstance(manifest.get(key), str) or not manifest[key].strip():
            raise UserError(f"{CONFIG_NAME} names no {key.replace('_', ' ')}; it is not an erasure manifest "
                            "(re-run erasure train)")
    changed = manifest["changed_tensors"]
    if not isinstance(changed, list) or not all(isinstance(k, str) for k in changed):
        raise UserError(f"{CONFIG_NAME} lists its changed tensors wrongly (not a list of names); re-run erasure train")
    from safetensors import safe_open
    try:
        with safe_open(str(weights), framework="pt") as handle:  # the header only: truncation shows here
            keys = set(handle.keys())
    except Exception as e:  # SafetensorError: cut short, or not safetensors at all
        raise UserError(f"{WEIGHTS_NAME} is not a complete safetensors file ({_shown(str(e), 120)}); re-run erasure "
                        "train") from None
    if keys != set(changed):
        raise UserError(f"{WEIGHTS_NAME} and {CONFIG_NAME} list different tensors; re-run erasure train")
    return manifest


def check_base(folder: Path, manifest: dict, base_dir: Path | None) -> None:
    """The base model the manifest of erasure `folder` names is there, found as loading it finds
    it (`model_ref.resolve`), and (given `base_dir`, the demo's) is the demo's own: an erasure
    applies to the base it was trained on only. Else a one-line UserError."""
    base = manifest["base_model"]
    try:
        path = resolve(folder).base_path
    except (UserError, OSError, ValueError) as e:
        found = str(e).split(";")[0].replace(f"{folder}: ", "").replace(str(folder), "the folder")
        raise UserError(f"its base model cannot be found ({_shown(found, 300)}); restore it, or train "
                        "the erasure again on this demo's model") from None
    if base_dir is not None and path.resolve() != Path(base_dir).resolve():
        model = base if base.lower() in NAMED_MODELS else path  # a relative base is relative to the erasure
        raise UserError(f"it was trained on {_shown(base, 300)}, not this demo's model; start the demo with "
                        f"--model {_shown(model, 300)} to use it")


def find_erasures(root: Path, base_dir: Path | None = None) -> list[ErasureInfo]:
    """Every erasure folder up to three levels under `root` (one holding a manifest or weights,
    safetensors or pickle), by name, checked as `read_erasure` and (given `base_dir`) `check_base`
    check; one that fails is listed with the reason, so a damaged folder never stops the listing
    or the demo. Hidden folders (a training run's temp folder) are skipped."""
    folders = set()
    for depth in ("*", "*/*", "*/*/*"):
        folders.update(f.parent for f in root.glob(f"{depth}/erasure_*") if f.name in ERASURE_FILES)
    found = []
    for folder in folders:
        name = folder.relative_to(root).as_posix()
        if any(part.startswith(".") for part in name.split("/")):
            continue
        manifest, error = None, ""
        try:
            manifest = read_erasure(root, folder)
            check_base(folder, manifest, base_dir)
        except UserError as e:
            error = _reason(e)
        except Exception as e:  # a check's own bug must not hide the other erasures
            log.debug("checking the erasure folder %s failed", folder, exc_info=True)  # listed every second
            error = f"it could not be checked ({type(e).__name__})"
        try:
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        except OSError:
            size = 0
        found.append(ErasureInfo(name, folder, manifest, error, size))
    return sorted(found, key=lambda e: e.name)


def resolve_erasure(root: Path, name: str | None, base_dir: Path | None = None) -> Path:
    """The erasure folder `name` (relative to `root`, or a path inside it), checked: inside
    `root` (symlinks followed), present, and passing `read_erasure` and (given `base_dir`)
    `check_base`; else a one-line UserError naming it as the user did."""
    name = _text(name, "the erasure", MAX_PATH_CHARS)
    if not name:
        raise UserError("choose an erasure (the Erase tab trains one)")
    try:
        path = Path(name).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
        inside, is_dir = path.is_relative_to(root.resolve()), path.is_dir()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a name too long, ~nobody, a symlink loop
        raise UserError(f"'{_shown(name)}' is not a folder name; choose an erasure from the list") from None
    if not inside:
        raise UserError(f"'{_shown(name)}' is outside the erasures folder {root}; only erasures under it can be loaded")
    if not is_dir:
        raise UserError(f"no erasure folder '{_shown(name)}' under {root}")
    try:
        check_base(path, read_erasure(root, path), base_dir)
    except UserError as e:
        raise UserError(f"cannot use erasure '{_shown(name)}': {e}") from None
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
        ok = low <= number <= high and (number.is_integer() or not whole)  # NaN compares False: refused
    except (TypeError, ValueError, OverflowError):  # a list, "abc", an int past float's range
        ok = False
    if not ok:
        raise UserError(f"{name} must be a {'whole ' if whole else ''}number from {low} to {high} on this demo "
                        f"(got {_shown(value)})")
    return number


def _text(value, name: str, limit: int) -> str:
    """A text field (from the UI, or from the API, where anything may come) stripped: None is
    empty; anything but text, or text longer than `limit`, is a one-line UserError."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{name} must be text (got {type(value).__name__})")
    value = value.strip()
    if len(value) > limit:
        raise UserError(f"{name} is {len(value)} characters long, over this demo's {limit}; shorten it")
    return value


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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, no permission: one line from the CLI, not a traceback
            raise UserError(f"--erasures {erasures_dir} cannot be used as the erasures folder "
                            f"({e.strerror or type(e).__name__}); give a folder the demo may create and write") \
                from None
        self.sampling = dict(self.ref.sampling)
        self._pipes: dict[str, object] = {}
        self._load_lock = threading.Lock()
        try:
            self.tokenizer = self.pipeline().tokenizer
        except UserError:
            raise
        except Exception as e:  # damaged weights in --model: the CLI says so in one line
            log.debug("loading %s failed", self.model, exc_info=True)  # not printed: the CLI's line says it
            raise UserError(f"could not load --model {self.model} ({type(e).__name__}: "
                            f"{_shown(str(e), 200)}); check that folder's files") from None
        self.queue = TrainingQueue(self.root, self.limits.max_waiting_jobs)

    # models
    def pipeline(self, ref: ModelRef | None = None, keep: int = 2):
        """The base model's pipeline (no `ref`) or an erasure's, loaded once (the base and the
        `keep` most recently used erasures stay), with a scheduler of its own for this request."""
        key = BASE if ref is None else f"{ref.path}@{(ref.manifest or {}).get('created')}"  # retrained: reloaded
        with self._load_lock:
            if key not in self._pipes:
                self._pipes[key] = self._load(ref)
                for old in [k for k in self._pipes if k not in (BASE, key)][:-keep or None]:
                    del self._pipes[old]
            self._pipes[key] = self._pipes.pop(key)  # most recently used last
            return _private(self._pipes[key])

    def _load(self, ref: ModelRef | None):
        """Load the base (no `ref`) or an erasure; an erasure that passed the listing's checks yet
        fails to load (its tensors' shapes or dtypes, a sampling entry) is a one-line UserError
        naming it, never a traceback."""
        if ref is None:
            return load_pipeline(self.ref, device=self.device)
        path, root = ref.path.resolve(), self.root.resolve()
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else ref.path.name
        try:
            return load_pipeline(ref, device=self.device)
        except UserError as e:
            said = str(e).replace(f"{ref.path}: ", "").replace(str(ref.path), "the folder")
            raise UserError(f"cannot use erasure '{name}': {said}") from None
        except Exception as e:
            log.exception("loading the erasure %s failed", ref.path)
            raise UserError(f"cannot use erasure '{name}': it failed to load ({type(e).__name__}: "
                            f"{_shown(str(e), 200)}); re-run erasure train") from None

    def lookup(self, name: str | None) -> ModelRef:
        """An erasure of this demo's base model under the erasures folder, checked (`resolve_erasure`)
        and resolved (its manifest, its sampling)."""
        path = resolve_erasure(self.root, name, self.base_dir)
        try:
            return resolve(path)
        except UserError as e:  # changed on disk since the check
            raise UserError(f"cannot use erasure '{_shown(name)}': {e}") from None

    def erasures(self) -> list[ErasureInfo]:
        """The erasures under the erasures folder, each with why it cannot be used, if it cannot."""
        return find_erasures(self.root, self.base_dir)

    def choices(self) -> list[tuple[str, str]]:
        """(label, name) for the erasure menu: every erasure found, one that cannot be used labelled
        "name (unreadable: reason)"; choosing it answers that reason in one line."""
        return [(e.label, e.name) for e in self.erasures()]

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
        it is cut there (the pipeline would cut it silently). A huge one is cut before its spaces are
        tidied, so 100k characters cost no more than the limit."""
        if prompt is not None and not isinstance(prompt, str):
            raise UserError(f"the prompt must be text (got {type(prompt).__name__})")
        limit = self.limits.max_prompt_chars
        prompt = " ".join((prompt or "")[:RAW_PROMPT_FACTOR * limit].split())[:limit]
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
            raise UserError(f"{title} does not know '{_shown(unknown[0])}'; it draws {', '.join(sorted(choices))}")

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
        seed = int(_number(seed, "seed", 0, MAX_SEED))
        guidance = _number(self.sampling["guidance_scale"] if guidance is None else guidance, "guidance", 0, MAX_GUIDANCE,
                           whole=False)
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
        concept = _text(concept, "the concept", MAX_NAME_CHARS)
        method = _text(method, "the method", MAX_NAME_CHARS)
        anchor = _text(anchor, "the anchor", self.limits.max_prompt_chars)
        name = _text(name, "the name", MAX_NAME_CHARS)
        spec = get_method(method)
        if not concept:
            raise UserError("the concept is empty; say what to erase, e.g. circle")
        self.check_concepts(concept)
        settings = {"concept": concept, "method": spec.name, "anchor": anchor,
                    "base_model": self.model, "checkpoint_every": 0}
        if self.device:
            settings["device"] = self.device
        if steps not in (None, "", 0):
            settings["steps"] = int(_number(steps, "training steps", 1, self.limits.max_train_steps))
        config = EraseConfig.from_dict(settings)  # every other setting checked now
        if config.steps > self.limits.max_train_steps:
            raise UserError(f"{spec.name} defaults to {config.steps} steps, over this demo's {self.limits.max_train_steps}; "
                            "give fewer steps")
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"'{name}' is not a plain folder name; use letters, digits, '.', '_' and '-'")
        if not name:  # method-concept, numbered when taken
            stem = re.sub(r"[^a-z0-9]+", "-", f"{spec.name}-{concept}".lower()).strip("-")
            candidates = itertools.chain([stem], (f"{stem}-{k}" for k in itertools.count(2)))
            name = next(n for n in candidates if not self.queue.taken(n))
        return self.queue.submit(name, settings)

    def describe_method(self, method: str) -> str:
        spec = get_method(_text(method, "the method", MAX_NAME_CHARS))
        cfg = spec.default_config(base_model=self.model)
        return f"**{spec.name}**: {spec.description}. Trains {cfg.target}; default {cfg.steps} steps, lr {cfg.lr:g}."
