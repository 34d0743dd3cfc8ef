"""The MiniSD judge: object, colour and style of a 64x64 image, with a confidence per head."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError
from ..files import load_tensors
from ..worlds.mini.nets import Judge
from ..worlds.mini.world import COLORS, OBJECTS, STYLES

# the world whose images this judge reads and whose concepts its labels name (erasure.worlds.get_world)
WORLD = "mini"
JUDGE_PATH = Path(__file__).parent.parent / "worlds" / "mini" / "weights" / "judge.safetensors"
# what the judge (and MiniSD) knows, per head: every concept MiniSD can erase is one of these
LABELS: dict[str, tuple[str, ...]] = {"object": OBJECTS, "color": COLORS, "style": STYLES}


def judge_record() -> dict:
    """The bundled judge as a harness records it (erasure.harness)."""
    from ..harness import judge_file
    return judge_file("minisd", JUDGE_PATH)


@lru_cache(maxsize=4)
def load_judge(device: str = "cpu", path: str | None = None) -> Judge:
    path = Path(path) if path else JUDGE_PATH
    if not path.exists():
        raise UserError(f"the MiniSD judge weights are missing at {path}; train them with "
                        "python -m erasure.worlds.mini.train --stages judge")
    judge = Judge()
    judge.load_state_dict(load_tensors(path))
    return judge.to(device).eval()


def classify(images: torch.Tensor, device: str = "cpu") -> list[dict]:
    """images: (B, 3, 64, 64) in [0, 1] -> one dict per image:
    {"object": name, "object_conf": p, "color": ..., "color_conf": ..., "style": ..., "style_conf": ...}."""
    if images.ndim != 4 or images.shape[1:] != (3, 64, 64):
        raise UserError(f"the MiniSD judge takes 64x64 RGB images, got shape {tuple(images.shape)}; "
                        "generate with MiniSD or resize to 64x64")
    pred = load_judge(device).predict(images.to(device).float())
    rows = []
    for i in range(images.shape[0]):
        row = {}
        for head, (labels, conf) in pred.items():
            row[head] = labels[i]
            row[f"{head}_conf"] = float(conf[i])
        rows.append(row)
    return rows
