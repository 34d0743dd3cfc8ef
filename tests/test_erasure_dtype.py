"""The dtype erasure files store their tensors in (erasure/erasure_files.py): the base model's own
dtype of each weight unless asked otherwise, recorded in the manifest and checked on loading."""
import json
from types import SimpleNamespace

import pytest
import torch
from test_trainers import make_config, trainer_for

from erasure.erasure_files import CONFIG_NAME, WEIGHTS_NAME, base_tensors, hash_tensors, save_erasure, storage_dtypes
from erasure.errors import UserError
from erasure.files import load_tensors, save_tensors
from erasure.pipelines import ErasedPipeline, load_pipeline


@pytest.fixture(scope="module")
def trained(tiny_sd_dir, tmp_path_factory):
    """A one-step ESD-x erasure of the tiny float32 model, saved as the trainer saves it."""
    out = tmp_path_factory.mktemp("esd") / "out"
    trainer = trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=1))
    trainer.train(out)
    return trainer, out


def saved_dtypes(folder):
    return {str(v.dtype) for v in load_tensors(folder / WEIGHTS_NAME).values()}


def test_a_float32_base_keeps_float32_files_bit_for_bit(trained):
    """What the trainer wrote before dtypes were a setting: its own float32 values, unrounded."""
    trainer, out = trained
    manifest = json.loads((out / CONFIG_NAME).read_text())
    assert manifest["stored_dtype"] == "float32" and set(manifest["tensor_dtypes"].values()) == {"float32"}
    saved = load_tensors(out / WEIGHTS_NAME)
    assert all(torch.equal(saved[k], p.detach()) for k, p in trainer.trainable.items())


def test_minisd_stores_its_weights_in_float16_so_its_erasures_are_float16():
    """"base" is the dtype of the base's files (read from their headers), not the float32 the
    trainer loads them in: MiniSD's files are float16."""
    from safetensors import safe_open

    from erasure.erasure_files import stored_dtypes
    from erasure.model_ref import MINISD_PATH

    with safe_open(str(MINISD_PATH / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        names = [k for k in f.keys() if "attn2.to_k" in k]  # noqa: SIM118 (a safetensors file, not a dict)
    dtypes = stored_dtypes(MINISD_PATH, [f"unet.{n}" for n in names])
    assert len(dtypes) == len(names) > 0 and set(dtypes.values()) == {torch.float16}


def test_a_trainer_on_a_float16_stored_base_writes_float16_and_loads_back(tmp_path):
    """Trained in float32 (as every trainer loads), saved in the base files' float16: half the
    bytes, each value the float16 rounding of the trained one, and ErasedPipeline applies it."""
    from tiny import build_tiny_pipeline

    base_dir = tmp_path / "fp16"
    build_tiny_pipeline().to(torch.float16).save_pretrained(base_dir, safe_serialization=True)
    trainer = trainer_for(make_config("esd-x-strict", base_dir, steps=1))
    out = trainer.train(tmp_path / "out")
    saved = load_tensors(out / WEIGHTS_NAME)
    assert {v.dtype for v in saved.values()} == {torch.float16}
    assert all(torch.equal(saved[k], p.detach().half()) for k, p in trainer.trainable.items())
    assert json.loads((out / CONFIG_NAME).read_text())["stored_dtype"] == "float16"
    pipe = ErasedPipeline.from_pretrained(out)
    state = pipe.unet.state_dict()
    key = next(iter(saved))
    assert torch.equal(state[key.split(".", 1)[1]].float(), saved[key].float())


def test_a_float16_base_stores_float16_at_half_the_bytes(tmp_path):
    """The tiny model saved in float16 and loaded in its own dtype: the erasure is float16 by
    default (the pipeline's weights' dtype), half the bytes of the same erasure in float32."""
    from tiny import build_tiny_pipeline

    base_dir = tmp_path / "fp16"
    build_tiny_pipeline().to(torch.float16).save_pretrained(base_dir, safe_serialization=True)
    pipe = load_pipeline(base_dir, dtype=torch.float16)
    keys = [f"unet.{n}" for n, _ in pipe.unet.named_parameters() if "attn2" in n]
    base = base_tensors(pipe, keys)
    changed = {k: v.float() + 0.01 for k, v in base.items()}  # a trainer's float32 master copies
    config = make_config("esd-x-strict", base_dir)
    dtypes = {k: v.dtype for k, v in base.items()}
    save_erasure(tmp_path / "base", config, changed, hash_tensors(base), base_dir, base_dtypes=dtypes)
    save_erasure(tmp_path / "fp32", config, changed, hash_tensors(base), base_dir, dtype=torch.float32)
    assert saved_dtypes(tmp_path / "base") == {"torch.float16"} and saved_dtypes(tmp_path / "fp32") == {"torch.float32"}
    assert json.loads((tmp_path / "base" / CONFIG_NAME).read_text())["stored_dtype"] == "float16"
    half = sum(v.nbytes for v in load_tensors(tmp_path / "base" / WEIGHTS_NAME).values())
    full = sum(v.nbytes for v in load_tensors(tmp_path / "fp32" / WEIGHTS_NAME).values())
    assert 2 * half == full
    assert (tmp_path / "base" / WEIGHTS_NAME).stat().st_size < 0.55 * (tmp_path / "fp32" / WEIGHTS_NAME).stat().st_size


def test_the_config_and_the_caller_choose_the_stored_dtype():
    tensors = {"unet.a": torch.zeros(2), "unet.b": torch.zeros(2)}
    assert set(storage_dtypes(tensors, SimpleNamespace(save_dtype="bfloat16")).values()) == {torch.bfloat16}
    assert set(storage_dtypes(tensors, SimpleNamespace(save_dtype="base"), base_dtypes={"unet.a": torch.float16}).values()) \
        == {torch.float16, torch.float32}  # a weight the caller names no dtype for keeps its own
    assert set(storage_dtypes(tensors, SimpleNamespace(save_dtype="float16"), dtype="float32").values()) == {torch.float32}
    with pytest.raises(UserError, match="unknown save dtype 'int8'"):
        storage_dtypes(tensors, SimpleNamespace(save_dtype="int8"))
    with pytest.raises(UserError, match="floating-point"):
        storage_dtypes(tensors, dtype=torch.int8)


def test_a_float16_erasure_on_a_float32_pipeline_matches_the_float32_erasure(trained, tmp_path):
    trainer, out = trained
    tensors = {k: p.detach() for k, p in trainer.trainable.items()}
    save_erasure(tmp_path / "fp16", trainer.config, tensors, trainer.base_hash, trainer.base_path, dtype=torch.float16)
    assert saved_dtypes(tmp_path / "fp16") == {"torch.float16"}
    full, half = ErasedPipeline.from_pretrained(out), ErasedPipeline.from_pretrained(tmp_path / "fp16")
    assert full.unet.dtype == half.unet.dtype == torch.float32  # cast to the pipeline's dtype on loading
    for key, value in tensors.items():
        loaded = half.unet.state_dict()[key.split(".", 1)[1]]
        assert torch.equal(loaded, value.half().float())  # float16's rounding of the float32 erasure, nothing else
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    t = torch.tensor([100, 700])
    with torch.no_grad():
        a = full.unet(x, t, encoder_hidden_states=c).sample
        b = half.unet(x, t, encoder_hidden_states=c).sample
    assert not torch.equal(a, b) and torch.allclose(a, b, rtol=1e-2, atol=1e-3)


def test_an_erasure_loads_into_a_bfloat16_pipeline_without_a_false_base_warning(trained):
    """The attack loads erasures in bfloat16 on CUDA: the base's rounded values are not "another base"."""
    import warnings

    trainer, out = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = ErasedPipeline.from_pretrained(out, dtype=torch.bfloat16)
    for key, p in trainer.trainable.items():
        assert torch.equal(pipe.unet.state_dict()[key.split(".", 1)[1]], p.detach().to(torch.bfloat16))


@pytest.mark.parametrize("damage, message", [
    ("manifest", r"do not match its manifest or are not floating point \(1 tensor\(s\): unet\.\S+ \(float32, manifest float16\)\)"),
    ("integer", r"not floating point \(1 tensor\(s\): unet\.\S+ \(int32\)\)"),
])
def test_a_dtype_the_manifest_does_not_record_is_a_one_line_error(damage, message, trained, tmp_path):
    import shutil

    _, out = trained
    folder = tmp_path / "broken"
    shutil.copytree(out, folder)
    manifest = json.loads((folder / CONFIG_NAME).read_text())
    key = manifest["changed_tensors"][0]
    if damage == "manifest":
        manifest["tensor_dtypes"][key] = "float16"
    else:
        tensors = load_tensors(folder / WEIGHTS_NAME)
        tensors[key] = tensors[key].to(torch.int32)
        save_tensors(folder / WEIGHTS_NAME, tensors)
        manifest["tensor_dtypes"][key] = "int32"
    (folder / CONFIG_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=message) as e:
        ErasedPipeline.from_pretrained(folder)
    assert "\n" not in str(e.value) and "re-run erasure train" in str(e.value)
