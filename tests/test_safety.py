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


def test_train_checks_out_before_any_work(tiny_sd_dir, tmp_path, capsys):
    import os
    file = tmp_path / "afile"
    file.write_text("x")
    theirs = tmp_path / "theirs"
    (theirs / "checkpoint").mkdir(parents=True)
    (theirs / "checkpoint" / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.pdf").write_text("mine")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o500)
    cases = [(file, "is a file"), (theirs, "not a training checkpoint"), (other, "holds files a run did not write")]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((readonly / "e", "cannot write"))
    for out, message in cases:
        code = run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(out), "--no-grid"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (out, err)
    assert (theirs / "checkpoint" / "notes.txt").read_text() == "mine" and (other / "report.pdf").exists()


def test_a_second_run_into_a_held_out_is_refused(tiny_sd_dir, tmp_path, capsys):
    from erasure.outdir import hold_out
    out = tmp_path / "e"
    out.mkdir()
    with hold_out(out):
        code = run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(out), "--no-grid"])
    assert code == 2 and "being written by another run" in capsys.readouterr().err
    assert not (out / "erasure_model.safetensors").exists()
    assert run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(out), "--no-grid"]) == 0


@pytest.mark.parametrize("make, argv, message", [
    (lambda d: (d / "c.yaml").write_text("method: esd-x\nconcept: circle\nsteps: abc\n"),
     ["train", "--config", "{d}/c.yaml"], "setting 'steps' must be a whole number"),
    (lambda d: (d / "c.yaml").write_text("- a\n- b\n"), ["train", "--config", "{d}/c.yaml"], "not a mapping of settings"),
    (lambda d: (d / "c.yaml").write_bytes(b"\xff\xfe\x00bin"), ["train", "--config", "{d}/c.yaml"], "not a YAML text file"),
    (lambda d: None, ["generate", "--prompt", "a circle", "--device", "tpu9"], "is not a device"),
    (lambda d: None, ["generate", "--prompt", "a circle", "--num-images", "100000"], "at most 256 per call"),
    (lambda d: None, ["generate", "--prompt", "a circle", "--guidance", "nan"], "--guidance must be a number"),
    (lambda d: None, ["attack", "--suite", "mini-objects", "--concept", "circle", "--budget", "2", "--json", "{d}/a.json"],
     "0 < --budget <= 1"),
    (lambda d: None, ["generate", "--prompt", "a circle " * 10000], "above the 2000 a prompt may be"),
    (lambda d: (d / "out").write_text("x"), ["generate", "--prompt", "a circle"], "is a file; choose a folder"),
    (lambda d: None, ["generate", "--prompt", "a circle", "--steps", "100000"], "--steps is at most 500"),
    (lambda d: None, ["train", "--concept", "circle" * 1000], "above the 2000 a prompt may be"),
    (lambda d: (d / "c.yaml").write_text("method: true\nconcept: circle\n"), ["train", "--config", "{d}/c.yaml"],
     "setting 'method' must be a method name"),
    (lambda d: (d / "c.yaml").write_text("concept: false\n"), ["train", "--config", "{d}/c.yaml"],
     "setting 'concept' must be a string"),
])
def test_bad_inputs_are_one_line_errors(make, argv, message, tiny_sd_dir, tmp_path, capsys):
    make(tmp_path)
    argv = [a.replace("{d}", str(tmp_path)) for a in argv]
    code = run([*argv, "--model", str(tiny_sd_dir), "--out", str(tmp_path / "out")] if argv[0] != "attack"
               else [*argv, "--model", str(tiny_sd_dir)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("erasure")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_a_truncated_erasure_is_a_one_line_error(tiny_sd_dir, tmp_path, capsys):
    erasure = tmp_path / "e"
    assert run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(erasure),
                "--no-grid"]) == 0
    weights = erasure / "erasure_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    for argv in (["generate", "--model", str(erasure), "--prompt", "a circle", "--steps", "1", "--out", str(tmp_path / "g")],
                 ["export", str(erasure), "--out", str(tmp_path / "x")]):
        assert run(argv) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("erasure")]
        assert len(errors) == 1 and "not a readable safetensors file" in errors[0] and "Traceback" not in err, err


@pytest.mark.parametrize("make, message", [
    (lambda out: out.write_text("x"), "is a file; choose a folder"),
    (lambda out: (out.mkdir(), (out / "bench.json").write_text("[1]")), "bench.json is corrupt"),
    (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "holds no bench.json"),
])
def test_bench_checks_out_before_any_work(make, message, tmp_path, capsys):
    out = tmp_path / "bench"
    make(out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert run(["bench", "--quick", "--methods", "esd-x", "--concepts", "circle", "--out", str(out)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], errors
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_an_erasure_with_nan_values_is_refused_on_load_and_never_written(tiny_sd_dir, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from erasure.config import EraseConfig
    from erasure.erasure_files import save_erasure
    erasure = tmp_path / "e"
    assert run(["train", "--concept", "circle", "--model", str(tiny_sd_dir), "--steps", "1", "--out", str(erasure),
                "--no-grid"]) == 0
    weights = erasure / "erasure_model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].clone()
    tensors[first].view(-1)[0] = float("nan")  # one value is enough
    save_file(tensors, weights, metadata={"format": "erasure/1", "method": "esd-x"})
    capsys.readouterr()
    for argv in (["generate", "--model", str(erasure), "--prompt", "a circle", "--steps", "1", "--out", str(tmp_path / "g")],
                 ["export", str(erasure), "--format", "lora", "--rank", "1", "--out", str(tmp_path / "l.safetensors")]):
        assert run(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("erasure")]
        assert len(errors) == 1 and f"hold NaN/inf values (e.g. {first})" in errors[0], errors
    assert not (tmp_path / "g").exists() and not (tmp_path / "l.safetensors").exists()

    config = EraseConfig.from_dict({"method": "esd-x", "concept": "circle", "base_model": str(tiny_sd_dir)})
    with pytest.raises(UserError, match="refusing to write an erasure whose tensors hold NaN/inf"):
        save_erasure(tmp_path / "never", config, tensors, "hash", tiny_sd_dir)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("port", [0, 70000])
def test_the_demo_refuses_a_port_out_of_range_before_loading(port):
    from erasure.demo.app import launch
    with pytest.raises(UserError, match="--port must be from 1 to 65535"):
        launch(model="/nonexistent", port=port)  # the model is never looked at


def test_oversized_manifests_and_prompt_files_are_refused_before_reading(tiny_sd_dir, tmp_path, capsys):
    # sparse files: the size check comes before any read, so neither is read nor allocated
    from erasure.erasure_files import MAX_MANIFEST_BYTES
    from erasure.prompt_files import MAX_PROMPT_FILE_BYTES
    erasure = tmp_path / "e"
    erasure.mkdir()
    with open(erasure / "erasure_config.json", "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)
    (erasure / "erasure_model.safetensors").write_bytes(b"")
    prompts = tmp_path / "p.csv"
    with open(prompts, "wb") as f:
        f.truncate(MAX_PROMPT_FILE_BYTES + 1)
    for argv, message in (
            (["generate", "--model", str(erasure), "--prompt", "a circle", "--out", str(tmp_path / "g")], "not a manifest"),
            (["eval", "--model", str(tiny_sd_dir), "--prompts", str(prompts), "--json", str(tmp_path / "r.json")],
             "a prompt file may be")):
        assert run(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("erasure")]
        assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "g").exists() and not (tmp_path / "r.json").exists()
