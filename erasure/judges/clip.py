"""CLIP from local files: the model, its image processor and tokenizer, loaded once per
(model, device). Used by the `clip_score` metric and the CLIP zero-shot judge.

`model` is a local transformers `CLIPModel` folder (e.g. a copy of openai/clip-vit-large-patch14)
or a hub id already in the local Hugging Face cache; it is loaded with `local_files_only=True`:
erasure never downloads weights, and a missing model is a one-line UserError naming the fix.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError


def missing_weights(who: str = "clip_score") -> str:
    """What `who` (a metric or judge) says when it has no CLIP weights."""
    return (f"{who} needs CLIP weights: pass a local transformers CLIP folder (e.g. clip-vit-large-patch14) "
            "as the metric's model setting; erasure never downloads")


class _NotLoaded(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@lru_cache(maxsize=4)
def _load(model: str, device: str) -> tuple[Any, Any, Any]:
    try:
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise UserError("clip_score needs transformers: pip install transformers") from e
    try:
        clip = CLIPModel.from_pretrained(model, local_files_only=True)
        processor = CLIPImageProcessor.from_pretrained(model, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError) as e:  # missing folder / files / cache entry
        if Path(model).is_dir():  # the folder is there but incomplete: say what transformers missed
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            reason = f"could not load the folder '{model}': {detail}"
        else:
            reason = f"'{model}' is neither a local folder nor in the local Hugging Face cache"
        raise _NotLoaded(reason) from e
    clip.eval().to(device)
    return clip, processor, tokenizer


def load_clip(model: str | Path, device: str = "cpu", who: str = "clip_score") -> tuple[Any, Any, Any]:
    """(CLIPModel in eval mode on `device`, image processor, tokenizer), from local files only;
    cached per (model, device). A model that cannot be loaded is a UserError in `who`'s words."""
    try:
        return _load(str(model), str(device))
    except _NotLoaded as e:
        raise UserError(f"{missing_weights(who)} ({e.reason})") from e.__cause__


def features(out: Any) -> torch.Tensor:
    """`get_*_features` returns a tensor (transformers 4) or an output whose pooler_output is it (5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
