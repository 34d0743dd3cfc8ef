"""erasure export --format lora|kohya: the erasure's change as low-rank factors, loaded back by
diffusers' own `load_lora_weights`; at full rank the LoRA pipeline computes what the erasure does."""
import pytest
import torch
from safetensors import safe_open

from erasure import ErasedPipeline
from erasure.cli import run


@pytest.fixture(scope="module")
def erasures(tiny_sd_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    out = {}
    for method in ("esd-x", "esd-x-strict"):
        out[method] = root / method
        assert run(["train", "--concept", "circle", "--method", method, "--model", str(tiny_sd_dir), "--steps", "2",
                    "--lr", "1e-2", "--out", str(out[method]), "--no-grid", "--save-dtype", "float32"]) == 0
    return out


def _unet_out(unet, text_encoder, tokenizer):
    ids = tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        return unet(latents, 500, encoder_hidden_states=hidden).sample


@pytest.mark.parametrize("method, fmt", [("esd-x", "lora"), ("esd-x-strict", "lora"), ("esd-x-strict", "kohya")])
def test_a_full_rank_lora_reproduces_the_erasure(method, fmt, erasures, tiny_sd_dir, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline
    file = tmp_path / "e.safetensors"
    assert run(["export", str(erasures[method]), "--format", fmt, "--rank", "1000", "--dtype", "float32",
                "--out", str(file)]) == 0
    printed = capsys.readouterr().out
    assert "relative error 0.00e+00" in printed and "left out" not in printed
    erased = ErasedPipeline.from_pretrained(erasures[method])
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    base = _unet_out(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    pipe.load_lora_weights(str(file))
    target = _unet_out(erased.unet, erased.text_encoder, erased.tokenizer)
    got = _unet_out(pipe.unet, pipe.text_encoder, pipe.tokenizer)
    assert not torch.allclose(base, target, atol=1e-4)
    assert torch.allclose(got, target, atol=1e-4, rtol=1e-4), float((got - target).abs().max())


def test_a_low_rank_lora_reports_its_error_and_is_smaller(erasures, tmp_path, capsys):
    small, full = tmp_path / "r1.safetensors", tmp_path / "full.safetensors"
    assert run(["export", str(erasures["esd-x"]), "--format", "lora", "--rank", "1", "--out", str(small)]) == 0
    low = capsys.readouterr().out
    assert run(["export", str(erasures["esd-x"]), "--format", "lora", "--rank", "1000", "--out", str(full)]) == 0
    errors = [float(line.split("relative error ")[1]) for line in low.splitlines() if "relative error" in line]
    assert errors and max(errors) > 0 and all(0 <= e < 1 for e in errors)
    assert small.stat().st_size < full.stat().st_size
    with safe_open(str(small), framework="pt") as f:
        assert all(f.get_slice(k).get_shape()[0] == 1 for k in f.keys() if k.endswith("lora_A.weight"))
        assert f.metadata()["erasure_method"] == "esd-x"


@pytest.mark.parametrize("args, message", [
    (["--format", "lora"], "needs --rank"),
    (["--format", "lora", "--rank", "0"], "at least 1"),
    (["--rank", "4"], "apply to a LoRA export"),
])
def test_bad_lora_export_input_is_one_line_exit_2(args, message, erasures, tmp_path, capsys):
    assert run(["export", str(erasures["esd-x"]), "--out", str(tmp_path / "x.safetensors"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_text_encoder_erasure_exports_under_the_text_model_names(tiny_sd_dir, tmp_path):
    # an AdvUnlearn-like change of the text encoder, imported, exported at full rank, loaded back
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    encoder = CLIPTextModel(pipe.text_encoder.config)
    encoder.load_state_dict(pipe.text_encoder.state_dict())
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "self_attn.q_proj" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    encoder.save_pretrained(tmp_path / "te", safe_serialization=True)
    assert run(["import", str(tmp_path / "te"), "--base", str(tiny_sd_dir), "--out", str(tmp_path / "e")]) == 0
    for fmt in ("lora", "kohya"):
        assert run(["export", str(tmp_path / "e"), "--format", fmt, "--rank", "1000", "--dtype", "float32",
                    "--out", str(tmp_path / f"{fmt}.safetensors")]) == 0
    with safe_open(str(tmp_path / "kohya.safetensors"), framework="pt") as f:
        assert all(k.startswith("lora_te_text_model_encoder_layers_") for k in f.keys())
    pipe.load_lora_weights(str(tmp_path / "lora.safetensors"))
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(pipe.text_encoder(ids)[0], encoder(ids)[0], atol=1e-4)
