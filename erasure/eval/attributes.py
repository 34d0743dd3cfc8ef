"""Attribute accuracy on MiniSD: generate images for prompts, let the judge read back object,
colour and style, count how often it reads what the prompt asked for.

The CSV format (`prompt,object,color,style`; an empty cell = not checked) is what
`erasure eval --prompts` takes.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..worlds.mini.world import COLORS, OBJECTS, STYLES

ATTRIBUTES = {"object": OBJECTS, "color": COLORS, "style": STYLES}


@dataclass
class PromptRow:
    prompt: str
    object: str | None = None
    color: str | None = None
    style: str | None = None


def read_prompt_csv(path: str | Path) -> list[PromptRow]:
    """Read and validate an attribute prompt CSV; every problem is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no prompt file at {path}; pass a CSV with columns prompt,object,color,style")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in (reader.fieldnames or [])]
        if "prompt" not in fields:
            raise UserError(f"{path} has no 'prompt' column (found: {', '.join(fields) or 'nothing'}); "
                            "the first line must be a header such as prompt,object,color,style")
        rows = []
        for line_no, raw in enumerate(reader, start=2):
            raw = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            if not raw.get("prompt"):
                raise UserError(f"{path} line {line_no}: empty prompt; every row needs prompt text")
            row = PromptRow(raw["prompt"])
            for attr, allowed in ATTRIBUTES.items():
                value = raw.get(attr, "").lower()
                if value and value not in allowed:
                    raise UserError(f"{path} line {line_no}: unknown {attr} '{value}'; use one of {', '.join(allowed)} "
                                    "or leave the cell empty")
                setattr(row, attr, value or None)
            rows.append(row)
    if not rows:
        raise UserError(f"{path} has a header but no prompts")
    return rows


def image_generators(seed: int, prompt_index: int, n: int) -> list[torch.Generator]:
    """One generator per image, so an image depends on (seed, prompt, k) and not on batching."""
    return [torch.Generator().manual_seed(seed + 1000 * prompt_index + k) for k in range(n)]


@torch.no_grad()
def generate(pipe, prompts: list[str], images_per_prompt: int, seed: int, sampling: dict, batch_images: int = 64,
             desc: str = "generating") -> torch.Tensor:
    """(len(prompts) * images_per_prompt, 3, H, W) in [0, 1], prompt-major, on CPU."""
    per_batch = max(1, batch_images // images_per_prompt)
    out = []
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, leave=False):
        chunk = prompts[start:start + per_batch]
        gens = [g for i in range(len(chunk)) for g in image_generators(seed, start + i, images_per_prompt)]
        images = pipe(chunk, num_images_per_prompt=images_per_prompt, generator=gens, output_type="pt", **sampling).images
        out.append(images.float().cpu())
    return torch.cat(out)


def attribute_accuracy(pipe, rows: list[PromptRow], images_per_prompt: int = 8, seed: int = 0,
                       sampling: dict | None = None, device: str = "cpu") -> dict:
    """{"summary": {object_acc, color_acc, style_acc, n_images}, "per_prompt": [...]}. An accuracy
    is the fraction of images whose judge label equals the expected value, over the rows that set
    it; None when no row sets it."""
    from ..judges.minisd import classify

    images = generate(pipe, [r.prompt for r in rows], images_per_prompt, seed, sampling or {})
    preds = classify(images, device)
    per_prompt, hits, counts = [], {a: 0 for a in ATTRIBUTES}, {a: 0 for a in ATTRIBUTES}
    for i, row in enumerate(rows):
        mine = preds[i * images_per_prompt:(i + 1) * images_per_prompt]
        entry = {"prompt": row.prompt, "n_images": images_per_prompt}
        for attr in ATTRIBUTES:
            expected = getattr(row, attr)
            if expected is None:
                entry[f"{attr}_acc"] = None
                continue
            k = sum(p[attr] == expected for p in mine)
            entry[f"{attr}_acc"] = k / images_per_prompt
            hits[attr] += k
            counts[attr] += images_per_prompt
        entry["predicted"] = [{a: p[a] for a in ATTRIBUTES} for p in mine]
        per_prompt.append(entry)
    summary = {f"{a}_acc": (hits[a] / counts[a] if counts[a] else None) for a in ATTRIBUTES}
    summary["n_images"] = len(rows) * images_per_prompt
    summary["n_prompts"] = len(rows)
    return {"summary": summary, "per_prompt": per_prompt, "images": images}
