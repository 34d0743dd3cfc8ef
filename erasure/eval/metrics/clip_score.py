"""`clip_score`: how well each image matches the prompt it was generated from, read by CLIP.

Protocol
--------
* Model: a transformers `CLIPModel` with its image processor and tokenizer, given by the
  metric's `model` setting: a local folder (e.g. a copy of openai/clip-vit-large-patch14, the
  usual choice in concept-erasure papers) or a hub id already in the local Hugging Face cache.
  Loaded with `local_files_only=True`: erasure never downloads weights; a missing model is a
  UserError naming the fix.
* Score: per image, `100 * max(cos(E_img(image), E_txt(prompt)), 0)`, where E_img / E_txt are
  CLIP's projected image / text embeddings (`get_image_features` / `get_text_features`) and cos
  is their cosine similarity. This is the CLIPScore of Hessel et al. (2021) on torchmetrics'
  scale (w = 100). The summary is the mean over images. Note: torchmetrics' `CLIPScore` clamps
  the *mean* at 0 rather than each image; the two agree whenever no cosine is negative, which
  is the case for real CLIP models on generated images (cosines are typically 0.15-0.40).
* Text: each prompt is tokenised with the model's tokenizer, padded per batch and truncated to
  the text model's maximum length (77 tokens for OpenAI CLIP); longer prompts lose their tail.
* Images: the (N, 3, H, W) float [0, 1] tensors go straight to the model's own image processor
  (its resize, centre crop and mean/std normalisation from preprocessor_config.json) with
  `do_rescale=False`, because they are already in [0, 1]: no uint8 / PIL round trip, no
  quantisation, and no second division by 255.
* Batching (`batch_size`, default 32) and `device` (default "cpu") do not change the numbers
  beyond float rounding. Loaded models are cached per (model, device) (erasure/judges/clip.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import UserError
from ...judges.clip import features, load_clip, missing_weights
from . import Metric, register_metric

DEFINITION = "100 * cos(image, text), clipped at 0 per image (torchmetrics' scale); summary = mean over images"
PREPROCESSING = ("images: the model's own image processor (resize, centre crop, normalise) applied to the float [0, 1] "
                 "tensors with do_rescale=False (no uint8/PIL round trip); texts: the model's tokenizer, padded, "
                 "truncated to the text model's max length")


@register_metric
class ClipScore(Metric):
    name = "clip_score"

    def __init__(self, model: str | Path | None = None, batch_size: int = 32, device: str = "cpu", **settings: Any) -> None:
        super().__init__(model=model, batch_size=batch_size, device=device, **settings)
        self.model = None if model is None else str(model)
        self.batch_size = int(batch_size)
        self.device = str(device)
        if self.batch_size < 1:
            raise UserError(f"clip_score batch_size must be >= 1, got {batch_size}; pass a positive batch_size")

    def judge(self) -> dict[str, Any]:
        from ...harness import judge_file
        return judge_file("clip", None, model=self.model)

    def check(self) -> None:
        if not self.model:
            raise UserError(missing_weights())
        load_clip(self.model, self.device)

    def compute(self, images: torch.Tensor, prompts: list[str], expected: list[dict]) -> dict[str, Any]:
        if not self.model:
            raise UserError(missing_weights())
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"clip_score expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
        if len(prompts) != images.shape[0]:
            raise ValueError(f"clip_score got {images.shape[0]} images but {len(prompts)} prompts")
        clip, processor, tokenizer = load_clip(self.model, self.device)
        max_length = int(clip.config.text_config.max_position_embeddings)

        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start : start + self.batch_size].detach().float().cpu().clamp(0, 1)
                texts = list(prompts[start : start + self.batch_size])
                pixels = processor(images=list(batch), do_rescale=False, return_tensors="pt")["pixel_values"]
                tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                img = features(clip.get_image_features(pixel_values=pixels.to(self.device)))
                txt = features(clip.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                      attention_mask=tokens["attention_mask"].to(self.device)))
                cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
                scores += (100 * cos).clamp(min=0).cpu().tolist()

        summary = {"clip_score": sum(scores) / len(scores) if scores else None, "n_images": len(scores)}
        return {"summary": summary,
                "per_image": [{"clip_score": s} for s in scores],
                "protocol": {"model": self.model, "definition": DEFINITION, "preprocessing": PREPROCESSING,
                             "max_text_tokens": max_length}}
