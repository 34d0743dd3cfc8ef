"""clip_score against an independent transformers computation, on a tiny random CLIP saved to disk."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from erasure.errors import UserError
from erasure.eval.metrics import get_metric, metric_names

PROMPTS = ["a photo of a red circle", "a watercolor painting of a cat", "an astronaut riding a horse",
           "a blue square on a white background", " ".join(["a very long prompt"] * 40)]  # > 77 tokens


def _save_tiny_clip(path: Path, sign: float) -> Path:
    """A random CLIP whose two towers share a LayerNorm bias and a projection, so image/text
    cosines are clearly positive (sign=+1) and vary per pair; sign=-1 negates the text
    projection, making every cosine negative (exercises the clip at 0)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from erasure.worlds.mini.tokenizer import build_clip_tokenizer_files

    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=49408, max_position_embeddings=77)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    with torch.no_grad():
        model.vision_model.post_layernorm.bias.fill_(1.0)
        model.text_model.final_layer_norm.bias.fill_(1.0)
        model.text_projection.weight.copy_(sign * model.visual_projection.weight)
    model.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    build_clip_tokenizer_files(path)
    CLIPTokenizer.from_pretrained(path).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return _save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), sign=1.0)


@pytest.fixture(scope="module")
def flipped_clip_dir(tmp_path_factory) -> Path:
    return _save_tiny_clip(tmp_path_factory.mktemp("tiny_clip_flipped"), sign=-1.0)


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _reference(clip_dir: Path, pixel_values: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """100 * cos (unclipped) straight from transformers' CLIPModel, with manual L2 normalisation."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir, local_files_only=True)
    ids = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixel_values)
        txt = model.get_text_features(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"])
    img = img if isinstance(img, torch.Tensor) else img.pooler_output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return 100 * (img * txt).sum(-1)


def test_registered():
    assert "clip_score" in metric_names()


def test_matches_independent_clip_at_native_size(clip_dir):
    """32x32 inputs need no resize/crop, so the reference normalises by hand: this also pins
    that [0, 1] images are not divided by 255 a second time."""
    from transformers import CLIPImageProcessor

    images = _images(len(PROMPTS), 32)
    proc = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    raw = _reference(clip_dir, (images - mean) / std, PROMPTS)
    assert (raw > 1).all()  # the comparison below is not a trivial 0 == 0
    expected = raw.clamp(min=0)

    out = get_metric("clip_score", model=str(clip_dir), batch_size=2).compute(images, PROMPTS, [{}] * len(PROMPTS))
    got = torch.tensor([row["clip_score"] for row in out["per_image"]])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert (got >= 0).all()
    assert out["summary"]["n_images"] == len(PROMPTS)
    assert out["summary"]["clip_score"] == pytest.approx(got.mean().item(), abs=1e-5)
    assert out["protocol"]["model"] == str(clip_dir)
    assert "clipped at 0" in out["protocol"]["definition"] and "do_rescale=False" in out["protocol"]["preprocessing"]


def test_matches_independent_clip_with_resize_and_batching(clip_dir):
    """48x40 inputs go through the processor's resize + centre crop; batch size must not matter."""
    from transformers import CLIPImageProcessor

    images = torch.rand(4, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    prompts = PROMPTS[:4]
    proc = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    pixels = proc(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (4, 3, 32, 32)
    expected = _reference(clip_dir, pixels, prompts).clamp(min=0)
    assert (expected > 1).all()

    for bs in (1, 3, 32):
        out = get_metric("clip_score", model=clip_dir, batch_size=bs).compute(images, prompts, [{}] * 4)
        got = torch.tensor([row["clip_score"] for row in out["per_image"]])
        assert torch.allclose(got, expected, atol=1e-4), (bs, got, expected)
        assert out["summary"]["clip_score"] == pytest.approx(expected.mean().item(), abs=1e-4)


def test_scores_differ_per_prompt(clip_dir):
    """The same image scored against different prompts gives different values (text is used)."""
    image = _images(1, 32, seed=3).expand(3, -1, -1, -1)
    out = get_metric("clip_score", model=clip_dir).compute(image, PROMPTS[:3], [{}] * 3)
    values = [row["clip_score"] for row in out["per_image"]]
    assert min(values) > 0 and max(values) - min(values) > 1e-3


def test_negative_cosines_clip_to_zero(flipped_clip_dir):
    from transformers import CLIPImageProcessor

    images = _images(3, 32, seed=4)
    out = get_metric("clip_score", model=flipped_clip_dir).compute(images, PROMPTS[:3], [{}] * 3)
    proc = CLIPImageProcessor.from_pretrained(flipped_clip_dir, local_files_only=True)
    pixels = proc(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]
    assert (_reference(flipped_clip_dir, pixels, PROMPTS[:3]) < 0).all()
    assert [row["clip_score"] for row in out["per_image"]] == [0.0, 0.0, 0.0]
    assert out["summary"]["clip_score"] == 0.0


def test_missing_model_is_a_user_error(tmp_path):
    images, prompts = _images(1, 32), ["a cat"]
    with pytest.raises(UserError, match="clip_score needs CLIP weights.*model setting.*never downloads"):
        get_metric("clip_score").compute(images, prompts, [{}])
    with pytest.raises(UserError, match="clip_score needs CLIP weights.*never downloads") as info:
        get_metric("clip_score", model=str(tmp_path / "no_such_clip")).compute(images, prompts, [{}])
    assert "\n" not in str(info.value)
