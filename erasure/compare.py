"""The before/after grid `erasure train` writes: the base model and the erased model on the
concept's prompts and a few unrelated ones, same seeds, one row per prompt."""
from __future__ import annotations

from pathlib import Path

import torch

from .models import is_minisd, load_pipeline, model_sampling, resolve_model

SD_UNRELATED = ["a photo of a dog on a beach", "a city street at night", "a bowl of fruit on a table"]


def comparison_prompts(config) -> tuple[list[str], list[str]]:
    base = resolve_model(config.base_model)
    concepts = config.concepts
    if is_minisd(base):
        from .worlds.mini.world import OBJECTS, parse_caption
        named = {parse_caption(c)["object"] for c in concepts}
        concept_prompts = [f"a red {c}" for c in concepts] + [f"a striped blue {c}" for c in concepts]
        unrelated = [f"a green {o}" for o in OBJECTS if o not in named][:4]
        return concept_prompts, unrelated
    return [f"a photo of {c}" for c in concepts], SD_UNRELATED


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
    from .eval.attributes import generate
    from .images import grid, save_png

    concept_prompts, unrelated = comparison_prompts(config)
    prompts = concept_prompts + unrelated
    rows = []
    for model in (config.base_model, erasure_dir):  # each with its own sampling (a one-step erasure: 1 step)
        pipe = load_pipeline(model, device=str(device))
        rows.append(generate(pipe, prompts, images_per_prompt, seed=1234, sampling=model_sampling(model),
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
