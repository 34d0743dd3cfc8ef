"""The before/after grid `erasure train` writes: the base model and the erased model on the
concept's prompts and a few unrelated ones (the world's `comparison_prompts`), same seeds, one
row per prompt."""
from __future__ import annotations

from pathlib import Path

import torch

from ..images import grid, save_png
from ..model_ref import resolve
from ..worlds import world_for
from .generation import generate


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


@torch.no_grad()
def write_comparison(erasure_dir: str | Path, config, device, images_per_prompt: int = 4) -> Path:
    """`<erasure_dir>/comparison.png`: per prompt, the base model's images, then the erasure's."""
    from ..pipelines import load_pipeline

    concept_prompts, unrelated = world_for(config.base_model).comparison_prompts(config.concepts)
    prompts = concept_prompts + unrelated
    rows = []
    for model in (resolve(config.base_model), resolve(erasure_dir)):  # each with its own sampling (one-step: 1 step)
        pipe = load_pipeline(model, device=str(device))
        rows.append(generate(pipe, prompts, images_per_prompt, seed=1234, sampling=dict(model.sampling),
                             desc="comparison grid"))
    before, after = rows
    n = images_per_prompt
    # each row: the prompt's images before | after
    tiles = torch.cat([torch.cat([before[i * n:(i + 1) * n], after[i * n:(i + 1) * n]]) for i in range(len(prompts))])
    scale = 2 if before.shape[-1] <= 128 else 1
    label_width = 170
    body = grid(tiles, nrow=2 * n, scale=scale, row_labels=prompts, label_width=label_width)
    image = with_header(body, label_width, ["before: base model", "after: erased"])
    path = Path(erasure_dir) / "comparison.png"
    save_png(image, path)
    return path
