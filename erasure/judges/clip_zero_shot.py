"""CLIP zero-shot judge: which of a few label texts an image matches best (Radford et al., 2021).

An image "shows" a label when that label has the highest cosine similarity between CLIP's
projected image embedding and the label text's embedding, among the labels given. The label set
is part of the protocol: a Van Gogh image is judged among {Van Gogh, Monet, Picasso, ...}, so a
number means "reads as Van Gogh rather than the other painters", not "is art". Used by the
benchmark for styles and objects on Stable Diffusion (UnlearnDiffAtk judges those with
classifiers trained for the task; CLIP zero-shot is the model-free stand-in the HUB benchmark
also uses). Weights come from a local transformers CLIP folder or the local HF cache only.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from .clip import features, load_clip


def zero_shot(images: torch.Tensor, labels: list[str], model: str, device: str = "cpu",
              batch_size: int = 32) -> list[dict]:
    """(N, 3, H, W) in [0, 1] -> per image {"label": best label, "scores": {label: cosine}}."""
    if not labels:
        raise UserError("the CLIP zero-shot judge needs at least one label")
    clip, processor, tokenizer = load_clip(model, device)
    max_length = int(clip.config.text_config.max_position_embeddings)
    out = []
    with torch.inference_mode():
        tokens = tokenizer(labels, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        text = features(clip.get_text_features(input_ids=tokens["input_ids"].to(device),
                                               attention_mask=tokens["attention_mask"].to(device))).float()
        text = torch.nn.functional.normalize(text, dim=-1)
        for start in range(0, images.shape[0], batch_size):
            batch = images[start:start + batch_size].detach().float().cpu().clamp(0, 1)
            pixels = processor(images=list(batch), do_rescale=False, return_tensors="pt")["pixel_values"]
            img = torch.nn.functional.normalize(features(clip.get_image_features(pixel_values=pixels.to(device))).float(),
                                                dim=-1)
            cos = (img @ text.T).cpu()
            for row in cos:
                out.append({"label": labels[int(row.argmax())], "scores": dict(zip(labels, row.tolist()))})
    return out
