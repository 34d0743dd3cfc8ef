"""Nothing unsafe loaded: safetensors only for base models, no code shipped with a model runs, and a
shared erasure's relative base is looked for beside it, not in the current directory."""
import json
import shutil

import pytest
import torch

from erasure import ErasedPipeline
from erasure.cli import run
from erasure.errors import UserError


def test_a_base_with_pickle_weights_is_refused_in_one_line(tiny_sd_dir, tmp_path, capsys):
    base = tmp_path / "pickled"
    shutil.copytree(tiny_sd_dir, base)
    from safetensors.torch import load_file
    file = next((base / "unet").glob("*.safetensors"))
    torch.save(load_file(file), base / "unet" / "diffusion_pytorch_model.bin")
    file.unlink()
    code = run(["generate", "--model", str(base), "--prompt", "a circle", "--steps", "1", "--out", str(tmp_path / "g")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "safetensors only" in err and "erasure import" in err
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("kwargs", [{"trust_remote_code": True}, {"custom_pipeline": "x"}, {"use_safetensors": False}])
def test_code_loading_options_are_refused(kwargs, tiny_sd_dir):
    with pytest.raises(UserError, match="refused"):
        ErasedPipeline.from_pretrained(tiny_sd_dir, **kwargs)


def test_a_relative_base_resolves_from_the_erasure_folder(tiny_sd_dir, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shutil.copytree(tiny_sd_dir, shared / "base")
    monkeypatch.chdir(shared)
    assert run(["train", "--concept", "circle", "--model", "base", "--steps", "1", "--out", "erasures/e", "--no-grid"]) == 0
    manifest = json.loads((shared / "erasures" / "e" / "erasure_config.json").read_text())
    assert manifest["base_model"] == "../../base"  # recorded relative to the erasure folder
    # moved elsewhere together, loaded from another directory holding a different "base"
    moved = tmp_path / "moved"
    shutil.move(str(shared), moved)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "base").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    pipe = ErasedPipeline.from_pretrained(moved / "erasures" / "e")
    assert pipe.unet.config.sample_size == ErasedPipeline.from_pretrained(moved / "base").unet.config.sample_size
    # a relative name found nowhere beside it is an error, never the current directory's folder
    manifest["base_model"], manifest["base_model_path"] = "base", "/nonexistent"
    (moved / "erasures" / "e" / "erasure_config.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="not.*beside the erasure folder|neither beside"):
        ErasedPipeline.from_pretrained(moved / "erasures" / "e")


def test_written_files_follow_the_umask(tmp_path):
    import os
    from erasure.files import write_json
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_export_touches_nothing_beside_out(tiny_sd_dir, tmp_path):
    erasure = tmp_path / "e"
    assert run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(erasure),
                "--no-grid"]) == 0
    mine = tmp_path / "x.tmp-export"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    assert run(["export", str(erasure), "--out", str(tmp_path / "x")]) == 0
    assert (mine / "keep.txt").read_text() == "mine" and (tmp_path / "x" / "model_index.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


def test_identical_runs_write_identical_erasure_files(tiny_sd_dir, tmp_path):
    for name in ("a", "b"):
        assert run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "2", "--out",
                    str(tmp_path / name), "--no-grid"]) == 0
    assert (tmp_path / "a" / "erasure_model.safetensors").read_bytes() == \
        (tmp_path / "b" / "erasure_model.safetensors").read_bytes()
