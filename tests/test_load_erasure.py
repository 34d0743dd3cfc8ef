"""erasure.load_erasure on every Stable Diffusion-layout pipeline class: the erasure's tensors land
in the caller's pipeline (the same outputs as an ErasedPipeline's components), with the checks."""
import pytest
import torch

from erasure import ErasedPipeline, UserError, load_erasure
from erasure.cli import run


@pytest.fixture(scope="module")
def erasure_dir(tiny_sd_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("le") / "erased"
    assert run(["train", "--concept", "circle", "--method", "esd-x", "--model", str(tiny_sd_dir), "--steps", "2",
                "--lr", "1e-2", "--out", str(out), "--no-grid"]) == 0
    return out


def _pipelines(tiny_sd_dir):
    from diffusers import (ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInpaintPipeline)
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(tiny_sd_dir, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(img2img.unet, conditioning_embedding_out_channels=(8, 8, 16))
    control = StableDiffusionControlNetPipeline.from_pretrained(tiny_sd_dir, controlnet=controlnet, safety_checker=None,
                                                                requires_safety_checker=False)
    return {"img2img": img2img, "inpaint": inpaint, "controlnet": control}


def _call(kind, pipe):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    common = dict(prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="pt")
    if kind == "img2img":
        return pipe(image=image, strength=0.8, **common).images
    if kind == "inpaint":
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 16:48, 16:48] = 1
        return pipe(image=image, mask_image=mask, height=64, width=64, **common).images
    return pipe(image=image, height=64, width=64, **common).images


@pytest.mark.parametrize("kind", ["img2img", "inpaint", "controlnet"])
def test_load_erasure_applies_to_each_pipeline_class(kind, tiny_sd_dir, erasure_dir):
    pipe = _pipelines(tiny_sd_dir)[kind]
    before = _call(kind, pipe)
    erased = ErasedPipeline.from_pretrained(erasure_dir)
    manifest = load_erasure(pipe, erasure_dir)
    assert manifest["method"] == "esd-x" and pipe.erasure_manifest is manifest
    for key in manifest["changed_tensors"]:
        component, name = key.split(".", 1)
        assert torch.equal(getattr(pipe, component).state_dict()[name], getattr(erased, component).state_dict()[name])
    after = _call(kind, pipe)
    assert not torch.allclose(before, after)  # the erasure changed what the pipeline draws
    again = type(pipe)(**{**pipe.components, "unet": erased.unet, "text_encoder": erased.text_encoder})
    assert torch.allclose(_call(kind, again), after, atol=1e-6)


def test_load_erasure_refuses_what_does_not_fit(tiny_sd_dir, erasure_dir, tmp_path):
    from tiny import build_tiny_pipeline
    from diffusers import UNet2DConditionModel
    pipe = build_tiny_pipeline()
    with pytest.raises(UserError, match="not an erasure folder"):
        load_erasure(pipe, tmp_path)
    pipe.unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                     block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                     attention_head_dim=4, norm_num_groups=8)
    with pytest.raises(UserError, match="does not fit the base model"):
        load_erasure(pipe, erasure_dir)
