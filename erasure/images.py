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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def read_image_folder(folder: str | Path, size: int, n: int | None = None) -> torch.Tensor:
    """The first `n` (sorted by name; all if None) images of a folder, each resized so its short
    side is `size` and centre-cropped to size x size: (N, 3, size, size) in [0, 1]."""
    import torch.nn.functional as F
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder of images; pass a folder holding PNG/JPEG/WebP files")
    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not files:
        raise UserError(f"{root} holds no PNG/JPEG/WebP image; put images of the concept there")
    out = []
    for f in files:
        image = load_image(f, "image", "remove or replace that file")
        h, w = image.shape[1:]
        scale = size / min(h, w)
        image = F.interpolate(image[None], size=(max(size, round(h * scale)), max(size, round(w * scale))),
                              mode="bilinear", antialias=True, align_corners=False)[0]
        top, left = (image.shape[1] - size) // 2, (image.shape[2] - size) // 2
        out.append(image[:, top:top + size, left:left + size].clamp(0, 1))
    return torch.stack(out)


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
