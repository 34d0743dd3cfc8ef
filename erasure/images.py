"""Image files: PNGs and grids, written atomically, and the one reader of image files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from .errors import UserError
from .files import atomic_path


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> PIL RGB."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def load_image(path: str | Path, what: str = "image", fix: str = "delete it and rerun") -> torch.Tensor:
    """One image file -> (3, H, W) float in [0, 1] (RGB); a file Pillow cannot read is a one-line
    UserError: "cannot read <what> <path> (<error>); <fix>"."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read {what} {path} ({type(e).__name__}); {fix}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


def save_png(image: torch.Tensor | Image.Image, path: str | Path) -> None:
    pil = image if isinstance(image, Image.Image) else to_pil(image)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


def grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 1,
         row_labels: list[str] | None = None, label_width: int = 0) -> Image.Image:
    """Tile (N, 3, H, W) images, `nrow` per row; optional text labels at the left of each row."""
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    hs, ws = h * scale, w * scale
    canvas = Image.new("RGB", (label_width + nrow * (ws + pad) + pad, rows * (hs + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, nrow)
        tile = to_pil(images[i]).resize((ws, hs), Image.NEAREST)
        canvas.paste(tile, (label_width + pad + c * (ws + pad), pad + r * (hs + pad)))
    for r, label in enumerate(row_labels or []):
        draw.text((4, pad + r * (hs + pad) + hs // 2 - 6), label, fill=(0, 0, 0))
    return canvas
