import json

import pytest
import torch

from erasure.errors import UserError
from erasure.model_ref import MINISD_PATH, default_sampling, resolve_model
from erasure.pipelines import load_pipeline


def test_tiny_sd_folder_round_trips_through_the_user_loading_path(tiny_sd_dir):
    from tiny import build_tiny_pipeline

    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    reference = build_tiny_pipeline()  # same seed -> same random weights as the saved folder
    for name, p in reference.unet.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[name], p), name
    out = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()
    again = pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(out, again)


def test_minisd_loads_with_plain_diffusers_offline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MINISD_PATH, local_files_only=True)
    images = pipe("a red circle", num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    # the shipped weights fit the size budget
    total = sum(f.stat().st_size for f in MINISD_PATH.rglob("*.safetensors"))
    assert total < 40 * 2**20


def test_sampling_defaults_come_from_the_folder(tiny_sd_dir, tmp_path):
    assert default_sampling(tiny_sd_dir) == {"num_inference_steps": 50, "guidance_scale": 7.5}
    assert default_sampling(MINISD_PATH)["num_inference_steps"] == 25


@pytest.mark.parametrize("bad, message", [
    ("/no/such/folder", "no model folder"),
    ("someone/not-cached-model", "never downloads"),
])
def test_bad_model_names_give_a_fix(bad, message):
    with pytest.raises(UserError, match=message):
        resolve_model(bad)


def test_folder_without_parts_is_rejected(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({}))
    with pytest.raises(UserError, match="lacks the Stable Diffusion part"):
        resolve_model(tmp_path)
    with pytest.raises(UserError, match="no model_index.json"):
        resolve_model(tmp_path / "unet" if (tmp_path / "unet").mkdir() is None else tmp_path)
