"""erasure import: erasures made elsewhere (ESD's trained-parameter file, AdvUnlearn's text-encoder
folder, UNet-only files and folders, full diffusers folders) become erasure folders that load and
are judged; pickles are refused unless opted in, and then read as tensors only."""
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from erasure import ErasedPipeline
from erasure.cli import run


@pytest.fixture(scope="module")
def base(tiny_mini_dir):
    from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline.from_pretrained(tiny_mini_dir, safety_checker=None, requires_safety_checker=False)


def _changed_unet(base, scale=0.05, every="attn2"):
    """The base UNet's state with every `every` Linear weight moved (an ESD-x-like change)."""
    state = {k: v.clone() for k, v in base.unet.state_dict().items()}
    moved = sorted(k for k in state if every in k and k.endswith(".weight"))
    gen = torch.Generator().manual_seed(0)
    for k in moved:
        state[k] += scale * torch.randn(state[k].shape, generator=gen)
    return state, moved


def _import(source, base_dir, out, *extra):
    return run(["import", str(source), "--base", str(base_dir), "--out", str(out), *extra])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_esd_official_parameter_file_imports_and_loads(base, tiny_mini_dir, tmp_path, capsys):
    # esd_sd.py saves the trained modules' parameters (weights and biases of every attn2 layer) in
    # bfloat16 under diffusers names; the biases it did not move equal the base rounded to bfloat16
    state, moved = _changed_unet(base)
    trained = {k: v.to(torch.bfloat16) for k, v in state.items() if ".attn2." in k}
    file = tmp_path / "esd-circle-from-circle-esdx.safetensors"
    save_file(trained, str(file))
    out = tmp_path / "esd-x"
    assert _import(file, tiny_mini_dir, out) == 0
    printed = capsys.readouterr().out
    assert "parameters source" in printed and f"{len(moved)} changed tensor(s)" in printed
    manifest = json.loads((out / "erasure_config.json").read_text())
    assert manifest["method"] == "imported" and manifest["concept"] == "circle"
    assert manifest["config"]["source_method"] == "esd-x" and manifest["stored_dtype"] == "bfloat16"
    assert manifest["changed_tensors"] == sorted(f"unet.{k}" for k in moved)  # unmoved biases are not changes
    erased = ErasedPipeline.from_pretrained(out)
    for k in moved:
        assert torch.equal(erased.unet.state_dict()[k], trained[k].float())
    untouched = next(k for k in state if ".attn1." in k)
    assert torch.equal(erased.unet.state_dict()[untouched], base.unet.state_dict()[untouched])


def test_an_imported_erasure_is_judged_by_eval(base, tiny_mini_dir, tmp_path):
    state, _ = _changed_unet(base, scale=0.5)
    file = tmp_path / "unet.safetensors"
    save_file(state, str(file))
    out = tmp_path / "imported"
    assert _import(file, tiny_mini_dir, out, "--concept", "circle") == 0
    result = tmp_path / "r.json"
    assert run(["eval", "--model", str(out), "--suite", "mini-objects", "--limit", "2", "--images-per-prompt", "1",
                "--steps", "2", "--json", str(result)]) == 0
    data = json.loads(result.read_text())
    assert data["erasure_manifest"]["method"] == "imported" and data["erasure_manifest"]["concept"] == "circle"
    assert data["n_prompts"] == 2


def test_unet_only_file_and_folder_import_only_what_differs(base, tiny_mini_dir, tmp_path):
    from diffusers import UNet2DConditionModel
    state = {k: v.clone() for k, v in base.unet.state_dict().items()}
    key = "conv_in.weight"
    state[key] += 0.1
    file = tmp_path / "unet.safetensors"
    save_file(state, str(file))
    assert _import(file, tiny_mini_dir, tmp_path / "from-file") == 0
    folder = tmp_path / "unet-folder"
    unet = UNet2DConditionModel.from_config(base.unet.config)
    unet.load_state_dict(state)
    unet.save_pretrained(folder)
    assert _import(folder, tiny_mini_dir, tmp_path / "from-folder") == 0
    for out in ("from-file", "from-folder"):
        manifest = json.loads((tmp_path / out / "erasure_config.json").read_text())
        assert manifest["changed_tensors"] == [f"unet.{key}"]
        assert torch.equal(load_file(tmp_path / out / "erasure_model.safetensors")[f"unet.{key}"], state[key])
    assert json.loads((tmp_path / "from-folder" / "erasure_config.json").read_text())["config"]["source_form"] == "unet-folder"


def test_advunlearn_text_encoder_folder_imports(base, tiny_mini_dir, tmp_path):
    from transformers import CLIPTextModel
    encoder = CLIPTextModel(base.text_encoder.config)
    encoder.load_state_dict(base.text_encoder.state_dict())
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "q_proj.weight" in name:
                param.add_(0.05)
    folder = tmp_path / "nudity_unlearned"
    encoder.save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "advunlearn"
    assert _import(folder, tiny_mini_dir, out, "--concept", "circle") == 0
    manifest = json.loads((out / "erasure_config.json").read_text())
    assert manifest["config"]["source_form"] == "text-encoder-folder"
    assert manifest["changed_tensors"] and all(k.startswith("text_encoder.") and "q_proj.weight" in k
                                               for k in manifest["changed_tensors"])
    erased = ErasedPipeline.from_pretrained(out)
    ids = base.tokenizer(["a circle"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(erased.text_encoder(ids)[0], encoder(ids)[0], atol=1e-6)


def test_full_diffusers_folder_imports_both_components(base, tiny_mini_dir, tmp_path):
    from tiny import build_tiny_pipeline
    pipe = build_tiny_pipeline()
    pipe.unet.load_state_dict(base.unet.state_dict())
    pipe.text_encoder.load_state_dict(base.text_encoder.state_dict())
    # transformers 4 names it text_model.final_layer_norm.weight, 5 final_layer_norm.weight
    norm = next(n for n, _ in pipe.text_encoder.named_parameters() if n.endswith("final_layer_norm.weight"))
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)
        dict(pipe.text_encoder.named_parameters())[norm].add_(0.1)
        pipe.vae.decoder.conv_out.bias.add_(1.0)  # the VAE is not part of an erasure
    folder = tmp_path / "finetuned"
    pipe.save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "full"
    assert _import(folder, tiny_mini_dir, out, "--dtype", "float16") == 0
    manifest = json.loads((out / "erasure_config.json").read_text())
    assert manifest["changed_tensors"] == [f"text_encoder.{norm}", "unet.conv_out.bias"]
    assert manifest["stored_dtype"] == "float16"


def test_pickle_is_refused_and_opt_in_reads_tensors_only(base, tiny_mini_dir, tmp_path, capsys):
    state, moved = _changed_unet(base)
    file = tmp_path / "diffusers-circle-ESDx1-UNET.pt"
    torch.save({k: state[k] for k in moved}, file)
    assert _import(file, tiny_mini_dir, tmp_path / "refused") == 2
    err = _error(capsys)
    assert "pickle checkpoint" in err and "--allow-pickle" in err and not (tmp_path / "refused").exists()

    with pytest.warns(UserWarning, match="weights_only=True"):
        assert _import(file, tiny_mini_dir, tmp_path / "opted", "--allow-pickle") == 0
    assert json.loads((tmp_path / "opted" / "erasure_config.json").read_text())["changed_tensors"] == \
        sorted(f"unet.{k}" for k in moved)

    # a pickle that would run code is refused by weights_only even when opted in: nothing runs
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.warns(UserWarning):
        assert _import(evil, tiny_mini_dir, tmp_path / "evil-out", "--allow-pickle") == 2
    assert "not a plain tensor checkpoint" in _error(capsys) and not marker.exists()

    folder = tmp_path / "bin-folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    assert _import(folder, tiny_mini_dir, tmp_path / "bin-out") == 2
    assert "pickle checkpoint" in _error(capsys)


@pytest.mark.parametrize("make, message", [
    (lambda d, s: save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(d / "x.safetensors")),
     "CompVis/ldm layout"),
    (lambda d, s: save_file({"not.a.weight": torch.zeros(1)}, str(d / "x.safetensors")), "in neither the base's UNet"),
    (lambda d, s: save_file({"conv_in.weight": torch.zeros(1)}, str(d / "x.safetensors")), "does not fit the base"),
    (lambda d, s: save_file({"conv_in.weight": s["conv_in.weight"]}, str(d / "x.safetensors")), "changes nothing"),
    (lambda d, s: save_file({"conv_in.weight": s["conv_in.weight"] * float("nan")}, str(d / "x.safetensors")),
     "non-finite"),
    (lambda d, s: (d / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage"), "not a readable"),
    (lambda d, s: (d / "x.safetensors").write_text(""), "not a readable"),
])
def test_bad_sources_are_one_line_errors(make, message, base, tiny_mini_dir, tmp_path, capsys):
    make(tmp_path, base.unet.state_dict())
    assert _import(tmp_path / "x.safetensors", tiny_mini_dir, tmp_path / "out") == 2
    assert message in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_used_out_and_a_missing_source(base, tiny_mini_dir, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    state, _ = _changed_unet(base)
    save_file(state, str(tmp_path / "u.safetensors"))
    assert _import(tmp_path / "u.safetensors", tiny_mini_dir, used) == 2
    assert "not an empty folder" in _error(capsys) and (used / "keep.txt").read_text() == "mine"
    assert _import(tmp_path / "nope.safetensors", tiny_mini_dir, tmp_path / "o") == 2
    assert "no file or folder" in _error(capsys)


def test_text_encoder_names_of_either_transformers_version_match(base, tiny_mini_dir, tmp_path):
    # Stable Diffusion's own text_encoder files (transformers 4) name tensors "text_model.<name>";
    # transformers 5 loads them as "<name>": a base and a source in either naming import and load
    import shutil
    from erasure.erasure_files import canonical_key, read_base_tensors
    old_base = tmp_path / "old-base"
    shutil.copytree(tiny_mini_dir, old_base)
    file = old_base / "text_encoder" / "model.safetensors"
    state = load_file(file)
    save_file({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in state.items()}, str(file))
    name = next(k for k in base.text_encoder.state_dict() if k.endswith("q_proj.weight"))
    assert torch.equal(read_base_tensors(old_base, [f"text_encoder.{name}"])[f"text_encoder.{name}"],
                       base.text_encoder.state_dict()[name])
    moved = base.text_encoder.state_dict()[name] + 0.1
    source = tmp_path / "old-style.safetensors"
    save_file({"text_encoder.text_model." + canonical_key(f"text_encoder.{name}").removeprefix("text_encoder."): moved},
              str(source))
    out = tmp_path / "imported"
    assert _import(source, old_base, out) == 0
    erased = ErasedPipeline.from_pretrained(out)
    assert torch.equal(erased.text_encoder.state_dict()[name], moved)
