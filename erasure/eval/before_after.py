"""The before/after grid `erasure train` writes: the base model and the erased model on the
concept's prompts and a few unrelated ones (the world's `comparison_prompts`), same seeds, one
row per prompt.

How many images it draws is the world's `comparison_size` (prompts, images per prompt): MiniSD
draws its 6 prompts in a few seconds on a CPU; on Stable Diffusion an image is 50 UNet calls of
an 860M-parameter network, so the grid keeps 2 prompts x 1 seed unless the world says otherwise.
Before drawing, one UNet call is timed and the grid's cost printed (images, steps, seconds).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..images import grid, save_png
from ..model_ref import resolve
from ..worlds import World, world_for
from .generation import generate

# (prompts, images per prompt) of a world that does not say: 2 prompts (the first concept prompt,
# the first unrelated one) x 1 seed, what a full-size model draws in well under a minute on a GPU
DEFAULT_COMPARISON_SIZE = (2, 1)
BATCH_IMAGES = 64  # images per pipeline call of the grid


def with_header(body, label_width: int, titles: list[str], height: int = 20):
    """`body` under a header row that names its column groups (equal widths, left to right)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (body.width, body.height + height), (255, 255, 255))
    canvas.paste(body, (0, height))
    draw = ImageDraw.Draw(canvas)
    group = (body.width - label_width) / len(titles)
    for i, title in enumerate(titles):
        x0 = label_width + i * group
        draw.text((x0 + 4, 4), title, fill=(0, 0, 0))
        if i:
            draw.line([(x0, 0), (x0, canvas.height)], fill=(200, 0, 0), width=1)
    return canvas


def comparison_plan(world: World, concepts: list[str]) -> tuple[list[str], int]:
    """(prompts, images per prompt) of the grid: the world's `comparison_size` (max prompts or
    None for all, images per prompt), taking concept prompts and unrelated ones in turn so that a
    2-prompt grid shows one of each."""
    concept_prompts, unrelated = world.comparison_prompts(concepts)
    max_prompts, images_per_prompt = getattr(world, "comparison_size", DEFAULT_COMPARISON_SIZE)
    if max_prompts is None or max_prompts >= len(concept_prompts) + len(unrelated):
        return concept_prompts + unrelated, images_per_prompt
    n_concept = min(len(concept_prompts), max(1, math.ceil(max_prompts / 2)))
    n_unrelated = min(len(unrelated), max_prompts - n_concept)
    n_concept = min(len(concept_prompts), max_prompts - n_unrelated)
    return concept_prompts[:n_concept] + unrelated[:n_unrelated], images_per_prompt


@torch.no_grad()
def time_unet_call(pipe, batch: int) -> float:
    """Seconds of one UNet call of `pipe` on a batch of `batch` latents at its default size (the
    first call: it includes any warm-up, so estimates made from it err on the long side)."""
    unet = pipe.unet
    p = next(unet.parameters())
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    x = torch.randn(batch, unet.config.in_channels, size, size, device=p.device, dtype=p.dtype)
    context = torch.zeros(batch, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size,
                          device=p.device, dtype=p.dtype)
    t = torch.tensor(500, device=p.device)
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    unet(x, t, encoder_hidden_states=context)
    sync()
    return time.perf_counter() - start


def human_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def grid_estimate(pipe, samplings: list[dict], n_prompts: int, images_per_prompt: int) -> tuple[str, float]:
    """The line printed before the grid is drawn, and its estimate in seconds: the images per
    model, the steps of each model, and one timed UNet call times the calls the grid makes
    (`generate` batches BATCH_IMAGES images per call, classifier-free guidance doubles the batch)."""
    per_batch = max(1, BATCH_IMAGES // images_per_prompt)
    chunks = math.ceil(n_prompts / per_batch)
    images = min(n_prompts, per_batch) * images_per_prompt
    guided = any(s.get("guidance_scale", 1.0) > 1 for s in samplings)
    call = time_unet_call(pipe, images * (2 if guided else 1))
    calls = sum(int(s.get("num_inference_steps", 50)) for s in samplings) * chunks
    steps = " and ".join(dict.fromkeys(str(s.get("num_inference_steps", 50)) for s in samplings))
    seconds = call * calls
    plural = lambda k, word: f"{k} {word}" + ("" if k == 1 else "s")  # noqa: E731
    line = (f"comparison grid: {plural(n_prompts * images_per_prompt, 'image')} per model ({plural(n_prompts, 'prompt')} "
            f"x {plural(images_per_prompt, 'seed')}), base and erased, at {steps} steps: about {human_seconds(seconds)} "
            f"({calls} UNet calls of {call:.2f} s)")
    return line, seconds


@torch.no_grad()
def write_comparison(erasure_dir: str | Path, config, device, images_per_prompt: int | None = None,
                     log: Callable[[str], None] | None = print) -> Path:
    """`<erasure_dir>/comparison.png`: per prompt, the base model's images, then the erasure's.
    `images_per_prompt` overrides the world's; `log` gets the cost line printed before drawing."""
    from ..pipelines import load_pipeline

    prompts, per_prompt = comparison_plan(world_for(config.base_model), config.concepts)
    n = images_per_prompt or per_prompt
    models = (resolve(config.base_model), resolve(erasure_dir))  # each with its own sampling (one-step: 1 step)
    rows = []
    for i, model in enumerate(models):
        pipe = load_pipeline(model, device=str(device))
        if i == 0 and log is not None:
            log(grid_estimate(pipe, [dict(m.sampling) for m in models], len(prompts), n)[0])
        rows.append(generate(pipe, prompts, n, seed=1234, sampling=dict(model.sampling), batch_images=BATCH_IMAGES,
                             desc="comparison grid"))
        del pipe  # one pipeline at a time on the device
    before, after = rows
    # each row: the prompt's images before | after
    tiles = torch.cat([torch.cat([before[i * n:(i + 1) * n], after[i * n:(i + 1) * n]]) for i in range(len(prompts))])
    scale = 2 if before.shape[-1] <= 128 else 1
    label_width = 170
    body = grid(tiles, nrow=2 * n, scale=scale, row_labels=prompts, label_width=label_width)
    image = with_header(body, label_width, ["before: base model", "after: erased"])
    path = Path(erasure_dir) / "comparison.png"
    save_png(image, path)
    return path


def release(trainer) -> torch.device:
    """Free a finished trainer's models (a full-size run holds the UNet, its frozen copy and the
    optimizer) before the grid loads two pipelines on the same device; returns that device."""
    import gc

    import torch

    device = torch.device(trainer.device)
    trainer.__dict__.clear()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return device
