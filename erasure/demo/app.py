"""The erasure demo: erase a concept, then see it gone, side by side.

    erasure demo --model minisd --erasures erasures/      # then open http://127.0.0.1:7860

Three tabs. Compare: the base model and an erasure draw the same prompt with the same seeds, and
each image carries the judge's verdict (MiniSD: the bundled classifier; Stable Diffusion: NudeNet,
and an image judged nude is blurred on the server, never sent raw). Erase: train an erasure in
the background, one job at a time, with progress and Cancel; it trains into a hidden temp folder
that is renamed into `--erasures DIR` only when complete. Erasures: what DIR holds, with the
manifests; one click loads one into Compare.

`Demo` holds the logic (tests drive it without a browser); `build_app` puts a Gradio UI on it.
Nothing leaves the machine: no share link, Gradio's analytics off, no fonts or scripts from the
network, and the app binds to 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no telemetry, no version check

import copy
import functools
import itertools
import logging
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, ImageFilter

import erasure
from erasure import UserError
from erasure.judges.minisd import LABELS

log = logging.getLogger("erasure.demo")
BASE = "base"  # the pipeline cache's key for the base model
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MANIFEST = "erasure_config.json"


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
        for cfg in root.glob(f"{depth}/{MANIFEST}"):
            folder = cfg.parent
            name = folder.relative_to(root).as_posix()
            if any(part.startswith(".") for part in name.split("/")):
                continue
            try:
                manifest, error = erasure.read_manifest(folder), ""
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
        erasure.read_manifest(path)
    except UserError as e:  # the message names the absolute path; the user typed a name
        raise UserError(str(e).replace(str(path), name)) from None
    return path


# ----------------------------------------------------------------------------- judging and showing
def show(image: torch.Tensor, blur: bool = False, min_size: int = 256) -> Image.Image:
    """(3, H, W) in [0, 1] -> a PIL image at least `min_size` wide (MiniSD's 64 px, enlarged
    without smoothing); `blur` pixelates then blurs it beyond recognition."""
    pil = Image.fromarray((image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy())
    if blur:
        pil = pil.resize((16, 16), Image.BILINEAR).resize(pil.size, Image.NEAREST).filter(ImageFilter.GaussianBlur(8))
    scale = max(1, -(-min_size // pil.width))
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def judge(images: torch.Tensor, minisd: bool) -> list[tuple[str, bool]]:
    """One (verdict, blur) per image. MiniSD: the classifier's object, colour and style with
    confidence. Stable Diffusion: NudeNet; nude images (and all, if NudeNet is missing) blur."""
    if minisd:
        from erasure.judges.minisd import classify
        return [(" · ".join(f"{r[h]} {r[f'{h}_conf']:.0%}" for h in LABELS), False) for r in classify(images)]
    from erasure.judges import nudenet
    try:
        detections = nudenet.detect(images)
    except UserError as e:  # NudeNet is not installed: nothing can be shown unjudged
        return [(f"not judged ({e}); blurred", True)] * len(images)
    out = []
    for dets in detections:
        exposed = nudenet.classes_above(dets)
        if exposed:
            scores = {c: max(float(d["score"]) for d in dets if d["class"] == c) for c in exposed}
            out.append(("nude: " + ", ".join(f"{c} {s:.2f}" for c, s in sorted(scores.items())) + " · blurred", True))
        else:
            out.append(("not nude", False))
    return out


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def example_prompts(concept: str | None, minisd: bool) -> tuple[list[str], list[str]]:
    """(prompts an erasure of `concept` should change, prompts it should keep)."""
    c = (concept or "").split(",")[0].strip().lower()
    if minisd:
        head = next((h for h, values in LABELS.items() if c in values), None)
        if head is None:
            c, head = "circle", "object"
        others = [v for v in LABELS[head] if v != c][:3]
        make = {"object": lambda v, col="red": f"{_article(col)} {col} {v}",
                "color": lambda v: f"{_article(v)} {v} star",
                "style": lambda v: f"a blue {v} square"}[head]
        erase = [make(c)] + ([f"a blue striped {c}"] if head == "object" else
                             [f"{_article(c)} {c} circle"] if head == "color" else [f"a red {c} heart"])
        return erase, [make(v) for v in others]
    if c in ("nudity", "nude", "naked"):
        return (["a photo of a nude woman on a beach", "a naked man, oil painting"],
                ["a photo of a woman in a red dress on a beach", "a man in a suit, oil painting"])
    if not c:
        return ["a photo of a church"], ["a photo of a dog in a park"]
    return ([f"a painting in the style of {concept}", f"a picture of {concept}"],
            ["a painting in the style of Claude Monet", "a photo of a dog in a park"])


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


# ----------------------------------------------------------------------------- training queue
@dataclass
class Job:
    id: int
    name: str                           # the erasure's folder name under the erasures folder
    settings: dict
    state: str = "waiting"              # waiting, training, done, cancelled, failed
    step: int = 0
    total: int = 0
    loss: float | None = None
    started: float = 0.0                # when training began (after the model loaded: first step)
    message: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def title(self) -> str:
        return f"{self.settings['method']} '{self.settings['concept']}' → {self.name}"

    def progress(self) -> str:
        if self.state != "training":
            return f"{self.title}: {self.state}" + (f" ({self.message})" if self.message else "")
        if not self.step:
            return f"{self.title}: loading the model and preparing"
        rate = (time.time() - self.started) / max(self.step - 1, 1)  # the first step also warms up
        left = int(rate * (self.total - self.step)) if self.step > 1 else None
        eta = f"{left // 60}:{left % 60:02d} left" if left is not None else "estimating time left"
        return f"{self.title}: step {self.step} / {self.total} · loss {self.loss:.4g} · {eta}"


class TrainingQueue:
    """Trains one erasure at a time, in order, on a background thread. A job trains into a hidden
    temp folder under `root`, renamed to its name when complete and removed when cancelled or
    failed, so the folder never shows a half-written erasure."""

    def __init__(self, root: Path, max_waiting: int, train=None) -> None:
        self.root, self.max_waiting = root, max_waiting
        self._train = train or erasure.train
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._wake = threading.Condition()
        threading.Thread(target=self._work, daemon=True, name="erasure-demo-training").start()

    def submit(self, name: str, settings: dict) -> Job:
        with self._wake:
            if (self.root / name).exists() or any(j.name == name and j.state in ("waiting", "training") for j in self.jobs):
                raise UserError(f"an erasure named '{name}' exists or is queued; choose another name")
            if len(self.waiting()) >= self.max_waiting:
                raise UserError(f"the training queue is full ({self.max_waiting} waiting); try again when one has finished")
            job = Job(next(self._ids), name, settings)
            self.jobs = [j for j in self.jobs if j.state in ("waiting", "training")] + \
                [j for j in self.jobs if j.state not in ("waiting", "training")][-100:] + [job]
            self._wake.notify()
        return job

    def get(self, job_id: int | None) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def waiting(self) -> list[Job]:
        return [j for j in self.jobs if j.state == "waiting"]

    def running(self) -> Job | None:
        return next((j for j in self.jobs if j.state == "training"), None)

    def cancel(self, job_id: int | None) -> Job | None:
        job = self.get(job_id)
        if job is not None:
            with self._wake:
                job.cancel.set()
                if job.state == "waiting":
                    job.state, job.message = "cancelled", "before it started"
        return job

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self.waiting():
                    self._wake.wait()
                job = self.waiting()[0]
                job.state = "training"
            self._run(job)

    def _run(self, job: Job) -> None:
        tmp = self.root / f".tmp-{job.name.replace('/', '_')}-{job.id}"

        def progress(step: int, total: int, logs: dict) -> bool:
            if step == 1:
                job.started = time.time()
            job.step, job.total, job.loss = step, total, logs.get("loss", float("nan"))
            return not job.cancel.is_set()

        try:
            if job.cancel.is_set():
                raise erasure.TrainingCancelled("cancelled")
            self._train(tmp, callback=progress, **job.settings)
            tmp.rename(self.root / job.name)  # the erasure appears complete or not at all
            job.state, job.message = "done", f"saved as {job.name}"
        except erasure.TrainingCancelled:
            job.state, job.message = "cancelled", f"at step {job.step}; nothing was saved"
        except UserError as e:
            job.state, job.message = "failed", str(e)
        except Exception as e:  # a bug: the log gets the traceback, the page one line
            log.exception("training job %s failed", job.id)
            job.state, job.message = "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def status(self, mine: int | None = None) -> str:
        """Markdown: the running job, the queue, and the caller's own last job."""
        lines = []
        running = self.running()
        lines.append(f"**Training:** {running.progress()}" + (" (yours)" if running.id == mine else "")
                     if running else "**Training:** nothing")
        waiting = self.waiting()
        lines += [f"**Waiting ({len(waiting)}):** " + "; ".join(
            f"{i}. {j.title}" + (" (yours)" if j.id == mine else "") for i, j in enumerate(waiting, 1))] if waiting else []
        job = self.get(mine)
        if job is not None and job.state not in ("training", "waiting"):
            lines.append(f"**Your last job:** {job.progress()}")
        return "\n\n".join(lines)


# ----------------------------------------------------------------------------- the demo's logic
@dataclass
class Side:
    """One model's half of a comparison: images drawn with seeds seed, seed + 1, ..."""
    label: str
    seed: int
    images: list[tuple[Image.Image, str]]   # (shown image, verdict)

    def verdicts(self) -> str:
        return "\n".join(f"- seed {self.seed + k}: {v}" for k, (_, v) in enumerate(self.images))


class Demo:
    """The demo without its UI: model loading, input checks, comparison, training, listing."""

    def __init__(self, model: str = "minisd", erasures_dir: str | Path = "erasures", limits: Limits | None = None,
                 device: str | None = None) -> None:
        self.model, self.device, self.limits = model, device, limits or Limits()
        if (Path(str(model)) / MANIFEST).exists():
            raise UserError(f"{model} is an erasure; --model takes its base model (e.g. minisd), and --erasures the "
                            "folder that holds erasures")
        self.base_dir = erasure.resolve_model(model)  # a wrong --model fails here, before the UI starts
        self.minisd = erasure.is_minisd(self.base_dir)
        self.root = Path(erasures_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sampling = erasure.model_sampling(self.base_dir)
        self._pipes: dict[str, object] = {}
        self._load_lock = threading.Lock()
        self.tokenizer = self.pipeline().tokenizer
        self.queue = TrainingQueue(self.root, self.limits.max_waiting_jobs)

    # models
    def pipeline(self, path: Path | None = None, manifest: dict | None = None, keep: int = 2):
        """The base model's pipeline (no `path`) or an erasure folder's, loaded once (the base and
        the `keep` most recently used erasures stay), with a scheduler of its own for this request."""
        key = BASE if path is None else f"{path}@{(manifest or {}).get('created')}"  # retrained: reloaded
        with self._load_lock:
            if key not in self._pipes:
                self._pipes[key] = erasure.load_pipeline(self.model if path is None else path, device=self.device)
                for old in [k for k in self._pipes if k not in (BASE, key)][:-keep or None]:
                    del self._pipes[old]
            self._pipes[key] = self._pipes.pop(key)  # most recently used last
            return _private(self._pipes[key])

    def lookup(self, name: str | None) -> tuple[Path, dict]:
        """An erasure of this demo's base model under the erasures folder, and its manifest."""
        path = resolve_erasure(self.root, name)
        manifest = erasure.read_manifest(path)
        if erasure.resolve_model(manifest["base_model"]).resolve() != self.base_dir.resolve():
            raise UserError(f"'{name}' was trained on {manifest['base_model']}, but this demo serves {self.model}; "
                            f"start it with --model {manifest['base_model']}")
        return path, manifest

    def erasures(self) -> list[ErasureInfo]:
        return find_erasures(self.root)

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

    # compare
    @torch.inference_mode()
    def _draw(self, pipe, prompt: str, seed: int, n: int, sampling: dict) -> list[tuple[Image.Image, str]]:
        generators = [torch.Generator().manual_seed(seed + k) for k in range(n)]
        images = pipe([prompt] * n, generator=generators, output_type="pt", **sampling).images.float().cpu()
        return [(show(img, blur), verdict) for img, (verdict, blur) in zip(images, judge(images, self.minisd))]

    def compare(self, prompt: str | None, erasure_name: str | None, seed=0, steps=None, guidance=None,
                n_images=1) -> tuple[Side, Side, str]:
        """(base side, erased side, notice): both models draw `prompt` with seeds seed, seed+1, ..."""
        lim = self.limits
        prompt, notice = self.check_prompt(prompt)
        steps = int(_number(self.sampling["num_inference_steps"] if steps is None else steps, "steps", 1, lim.max_steps))
        n = int(_number(n_images, "images", 1, lim.max_images))
        seed = int(_number(seed, "seed", 0, 2**31 - 1))
        guidance = _number(self.sampling["guidance_scale"] if guidance is None else guidance, "guidance", 0, 30, whole=False)
        path, manifest = self.lookup(erasure_name)
        sampling = {"num_inference_steps": steps, "guidance_scale": guidance}
        erased_sampling = sampling
        if erasure.model_sampling(path)["num_inference_steps"] == 1:  # a one-step generator (SFD)
            erased_sampling = erasure.model_sampling(path)
            notice += (" " if notice else "") + "This erasure is a one-step generator: sampled in 1 step, guidance 1."
        base = Side(f"Base model ({self.model})", seed, self._draw(self.pipeline(), prompt, seed, n, sampling))
        erased = Side(f"Erased: {manifest['concept']} ({manifest['method']}, {erasure_name})", seed,
                      self._draw(self.pipeline(path, manifest), prompt, seed, n, erased_sampling))
        return base, erased, notice

    # erase
    def submit(self, concept: str | None, method: str | None, anchor: str = "", steps=None, name: str = "") -> Job:
        """Queue a training job (checked now, so a mistake is reported before it waits)."""
        concept = (concept or "").strip()
        method = (method or "").strip()
        spec = erasure.get_method(method)
        if not concept:
            raise UserError("the concept is empty; say what to erase, e.g. circle")
        if self.minisd:
            known = {v for values in LABELS.values() for v in values}
            unknown = [c.strip() for c in concept.split(",") if c.strip().lower() not in known]
            if unknown:
                raise UserError(f"MiniSD does not know '{unknown[0]}'; it draws {', '.join(sorted(known))}")
        settings = {"concept": concept, "method": spec.name, "anchor": (anchor or "").strip(),
                    "base_model": self.model, "checkpoint_every": 0}
        if self.device:
            settings["device"] = self.device
        if steps not in (None, "", 0):
            settings["steps"] = int(_number(steps, "training steps", 1, self.limits.max_train_steps))
        config = erasure.EraseConfig.from_dict(settings)  # every other setting checked now
        if config.steps > self.limits.max_train_steps:
            raise UserError(f"{spec.name} defaults to {config.steps} steps, over this demo's {self.limits.max_train_steps}; "
                            "give fewer steps")
        name = (name or "").strip()
        if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise UserError(f"'{name}' is not a plain folder name; use letters, digits, '.', '_' and '-'")
        if not name:  # method-concept, numbered when taken
            stem = re.sub(r"[^a-z0-9]+", "-", f"{spec.name}-{concept}".lower()).strip("-")
            taken = {j.name for j in self.queue.jobs if j.state in ("waiting", "training")}
            candidates = itertools.chain([stem], (f"{stem}-{k}" for k in itertools.count(2)))
            name = next(n for n in candidates if n not in taken and not (self.root / n).exists())
        return self.queue.submit(name, settings)

    def describe_method(self, method: str) -> str:
        spec = erasure.get_method(method)
        cfg = spec.default_config(minisd=self.minisd)
        return f"**{spec.name}**: {spec.description}. Trains {cfg.target}; default {cfg.steps} steps, lr {cfg.lr:g}."


# ----------------------------------------------------------------------------- the UI
def _safe(fn, n_outputs: int):
    """Wrap a UI callback: a UserError (or a bug) becomes one line in the status box (the last
    output) and the other outputs are left as they are; never a traceback on the page."""
    @functools.wraps(fn)  # Gradio reads the signature (a gr.SelectData argument)
    def wrapped(*args):
        try:
            return fn(*args)
        except UserError as e:
            message = str(e).splitlines()[0]
        except Exception as e:
            log.exception("demo request failed")
            message = f"internal error ({type(e).__name__}); the server log has the details"
        return (*[gr.skip()] * (n_outputs - 1), f"**Error:** {message}")
    return wrapped


CSS = "#base-verdict, #erased-verdict {min-height: 3em}"


def build_app(model: str = "minisd", erasures_dir: str | Path = "erasures", limits: Limits | None = None,
              device: str | None = None, demo: Demo | None = None) -> gr.Blocks:
    """The Gradio app (not launched): Compare, Erase and Erasures tabs over a `Demo`."""
    demo = demo or Demo(model, erasures_dir, limits, device)
    lim = demo.limits
    names = [e.name for e in demo.erasures() if e.manifest]
    first = (names or [None])[0]

    def concept_of(name):
        try:
            return demo.lookup(name)[1]["concept"]
        except UserError:
            return None

    def samples(name):
        erase, keep = example_prompts(concept_of(name), demo.minisd)
        return [[p, "should change"] for p in erase] + [[p, "should stay"] for p in keep]

    with gr.Blocks(title="erasure demo", analytics_enabled=False) as app:
        gr.Markdown(f"# erasure demo\nBase model **{demo.model}**: erase a concept, then see it gone, side by side.")
        with gr.Tabs() as tabs:
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    prompt = gr.Textbox(label="Prompt", placeholder="a red circle", elem_id="prompt", scale=3,
                                        max_length=lim.max_prompt_chars)
                    chosen = gr.Dropdown(names, value=first, label="Erasure (a folder under the erasures folder)",
                                         allow_custom_value=True, elem_id="erasure", scale=2)
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                    steps = gr.Number(demo.sampling["num_inference_steps"], label=f"Steps (at most {lim.max_steps})",
                                      precision=0, elem_id="steps")
                    guidance = gr.Number(demo.sampling["guidance_scale"], label="Guidance", elem_id="guidance")
                    count = gr.Number(1, label=f"Images (at most {lim.max_images})", precision=0, elem_id="count")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="compare-status")
                with gr.Row():
                    with gr.Column():
                        base_gallery = gr.Gallery(label="Base model", columns=2, height="auto", elem_id="base-images")
                        base_verdict = gr.Markdown(elem_id="base-verdict")
                    with gr.Column():
                        erased_gallery = gr.Gallery(label="Erased", columns=2, height="auto", elem_id="erased-images")
                        erased_verdict = gr.Markdown(elem_id="erased-verdict")
                examples = gr.Dataset(components=[prompt, gr.Textbox(visible=False)], samples=samples(first),
                                      headers=["Example prompt", "after erasing"], label="Examples", elem_id="examples")

            with gr.Tab("Erase", id="erase"):
                methods = erasure.method_names()
                with gr.Row():
                    concept = gr.Dropdown([v for values in LABELS.values() for v in values] if demo.minisd else [],
                                          value=None, label="Concept", allow_custom_value=True, elem_id="concept")
                    method = gr.Dropdown([(f"{m}: {erasure.get_method(m).description}", m) for m in methods],
                                         value="esd-x", label="Method", elem_id="method")
                method_info = gr.Markdown(demo.describe_method("esd-x"))
                with gr.Row():
                    anchor = gr.Textbox(label="Anchor (what it becomes; empty: the method's default)", elem_id="anchor")
                    train_steps = gr.Number(None, label=f"Steps (empty: the method's default; at most "
                                            f"{lim.max_train_steps})", precision=0, elem_id="train-steps")
                    save_as = gr.Textbox(label="Save as (empty: method-concept)", elem_id="save-as")
                with gr.Row():
                    erase = gr.Button("Erase", variant="primary", elem_id="erase")
                    cancel = gr.Button("Cancel my job", variant="stop", elem_id="cancel")
                erase_status = gr.Markdown(elem_id="erase-status")
                progress = gr.Markdown(demo.queue.status(), elem_id="training")

            with gr.Tab("Erasures", id="erasures"):
                gr.Markdown(f"Erasures under `{demo.root}`. Click a row to load it in Compare.")
                table = gr.Dataframe([e.row() for e in demo.erasures()], headers=TABLE_HEADERS, interactive=False,
                                     elem_id="erasure-table")
                with gr.Row():
                    folder = gr.Textbox(label="Or type an erasure folder (inside the erasures folder)", elem_id="folder")
                    load = gr.Button("Load in Compare", elem_id="load")
                    refresh = gr.Button("Refresh", elem_id="refresh")
                list_status = gr.Markdown(elem_id="erasures-status")
                manifest_view = gr.JSON(label="Manifest")

        job_id = gr.State(None)
        listing = gr.State(tuple(e.row()[0] + e.row()[4] + e.row()[6] for e in demo.erasures()))
        timer = gr.Timer(1.0)

        def run_compare(p, name, s, st, g, n):
            base, erased, notice = demo.compare(p, name, s, st, g, n)
            return (gr.Gallery(value=base.images, label=base.label), base.verdicts(),
                    gr.Gallery(value=erased.images, label=erased.label), erased.verdicts(), notice)

        gr.on([generate.click, prompt.submit], _safe(run_compare, 5), [prompt, chosen, seed, steps, guidance, count],
              [base_gallery, base_verdict, erased_gallery, erased_verdict, status], api_name="generate",
              concurrency_limit=lim.concurrent_generations)
        examples.click(lambda row: row[0], examples, prompt)
        chosen.change(lambda name: gr.Dataset(samples=samples(name)), chosen, examples)
        method.change(_safe(lambda m: (demo.describe_method(m), ""), 2), method, [method_info, erase_status])

        def start(c, m, a, st, name):
            job = demo.submit(c, m, a, st, name)
            return job.id, demo.queue.status(job.id), f"Queued: {job.title}"

        erase.click(_safe(start, 3), [concept, method, anchor, train_steps, save_as], [job_id, progress, erase_status])

        def stop(jid):
            job = demo.queue.cancel(jid)
            if job is None:
                raise UserError("you have no training job to cancel")
            return demo.queue.status(jid), f"Cancelling {job.title}"

        cancel.click(_safe(stop, 2), job_id, [progress, erase_status])

        def rows_and_choices(seen, force=False):
            found = demo.erasures()
            key = tuple(e.row()[0] + e.row()[4] + e.row()[6] for e in found)
            if key == seen and not force:
                return gr.skip(), gr.skip(), seen
            return [e.row() for e in found], gr.Dropdown(choices=[e.name for e in found if e.manifest]), key

        def tick(jid, seen):
            return demo.queue.status(jid), *rows_and_choices(seen)

        timer.tick(tick, [job_id, listing], [progress, table, chosen, listing], queue=False, show_progress="hidden")
        refresh.click(lambda seen: (*rows_and_choices(seen, force=True), ""), listing,
                      [table, chosen, listing, list_status])

        def open_erasure(name):
            path, manifest = demo.lookup(name)
            demo.pipeline(path, manifest)  # load now: the first Generate is then quick
            shown = {k: v for k, v in manifest.items() if k != "changed_tensors"}
            rel = path.relative_to(demo.root.resolve()).as_posix()
            return gr.Dropdown(value=rel), shown, gr.Tabs(selected="compare"), f"Loaded {rel} into Compare"

        def pick(evt: gr.SelectData):
            return open_erasure(evt.row_value[0])

        table.select(_safe(pick, 4), None, [chosen, manifest_view, tabs, list_status])
        load.click(_safe(open_erasure, 4), folder, [chosen, manifest_view, tabs, list_status])
    return app


def host_warning(host: str) -> str | None:
    """What to tell the user when the app will not be private to this machine."""
    if host in LOCAL_HOSTS:
        return None
    return (f"serving on {host}, not only on this machine: anyone who can reach it can generate images and queue "
            "training jobs")


def launch(model: str = "minisd", erasures_dir: str | Path = "erasures", host: str = "127.0.0.1",
           port: int | None = None, limits: Limits | None = None, device: str | None = None,
           block: bool = True) -> gr.Blocks:
    """Build and serve the demo on host:port (127.0.0.1 unless asked; never a public share link).
    `block=False` returns the running app (tests; `app.close()` stops it)."""
    warning = host_warning(host)
    if warning:
        print(f"erasure demo: warning: {warning}", file=sys.stderr)
    limits = limits or Limits()
    app = build_app(model, erasures_dir, limits, device)
    app.queue(max_size=64, default_concurrency_limit=limits.concurrent_generations)
    app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, show_error=False,
               ssr_mode=False, mcp_server=False, enable_monitoring=False, css=CSS, quiet=not block,
               footer_links=[])
    return app
