import json

import pytest
from PIL import Image

from erasure.cli import run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_generate_writes_pngs_and_a_grid(tiny_sd_dir, tmp_path):
    out = tmp_path / "gen"
    assert run(["generate", "--prompt", "a red circle", "--model", str(tiny_sd_dir), "--num-images", "3",
                "--steps", "2", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000.png", "001.png", "002.png", "grid.png"]
    assert Image.open(out / "000.png").size == (64, 64)


def test_eval_writes_the_documented_json(tiny_sd_dir, tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,object,color,style\na red circle,circle,red,\na striped star,star,,striped\n")
    out = tmp_path / "r.json"
    assert run(["eval", "--model", str(tiny_sd_dir), "--prompts", str(csv), "--images-per-prompt", "2", "--steps", "2",
                "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    s = result["summary"]
    assert set(s) >= {"object_acc", "color_acc", "style_acc"}
    assert 0 <= s["object_acc"] <= 1 and 0 <= s["color_acc"] <= 1 and 0 <= s["style_acc"] <= 1
    rows = result["per_prompt"]
    assert [r["prompt"] for r in rows] == ["a red circle", "a striped star"]
    assert rows[0]["style_acc"] is None and rows[1]["color_acc"] is None and rows[0]["n_images"] == 2
    # the summary is the image-weighted mean of the rows that set the attribute
    assert s["object_acc"] == pytest.approx((rows[0]["object_acc"] + rows[1]["object_acc"]) / 2)
    assert s["color_acc"] == pytest.approx(rows[0]["color_acc"])


@pytest.mark.parametrize("case, args, message", [
    ("unknown model", ["generate", "--prompt", "x", "--model", "/nope/model", "--out", "{tmp}/o"], "no model folder"),
    ("zero images", ["generate", "--prompt", "x", "--num-images", "0", "--out", "{tmp}/o"], "--num-images must be at least 1"),
    ("no prompt column", ["eval", "--prompts", "{tmp}/noprompt.csv", "--json", "{tmp}/r.json"], "no 'prompt' column"),
    ("unknown object", ["eval", "--prompts", "{tmp}/badobj.csv", "--json", "{tmp}/r.json"], "unknown object 'banana'"),
    ("unknown colour", ["eval", "--prompts", "{tmp}/badcol.csv", "--json", "{tmp}/r.json"], "unknown color 'teal'"),
    ("missing csv", ["eval", "--prompts", "{tmp}/none.csv", "--json", "{tmp}/r.json"], "no prompt file"),
])
def test_bad_input_is_one_line_and_exit_2(case, args, message, tmp_path, capsys):
    (tmp_path / "noprompt.csv").write_text("text,object\na circle,circle\n")
    (tmp_path / "badobj.csv").write_text("prompt,object,color,style\na banana,banana,,\n")
    (tmp_path / "badcol.csv").write_text("prompt,object,color,style\na teal circle,circle,teal,\n")
    code = run([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, case
    err = _error_line(capsys)
    assert message in err and err.startswith("erasure: error:")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def test_train_writes_erasure_and_grid_and_export_is_a_standard_folder(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    assert run(["train", "--concept", "circle", "--method", "esd-x-strict", "--model", str(tiny_sd_dir), "--steps", "2",
                "--lr", "1e-3", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"erasure_config.json", "erasure_model.safetensors", "comparison.png"}
    printed = capsys.readouterr().out
    assert str(out) in printed and "comparison.png" in printed
    full = tmp_path / "full"
    assert run(["export", str(out), "--out", str(full)]) == 0
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(full)
    assert type(pipe) is StableDiffusionPipeline
    # generate and eval accept an erasure folder as --model
    assert run(["generate", "--prompt", "a circle", "--model", str(out), "--num-images", "1", "--steps", "2",
                "--out", str(tmp_path / "g")]) == 0


def test_yaml_then_flags_precedence(tiny_sd_dir, tmp_path):
    from erasure.cli import _train_config, build_parser
    cfg = tmp_path / "run.yaml"
    cfg.write_text("method: esd-u\nconcept: star\nsteps: 7\nlr: 0.002\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--steps", "9", "--model", str(tiny_sd_dir),
                                      "--out", str(tmp_path / "o")])
    config = _train_config(args)
    assert (config.method, config.concept, config.steps, config.lr, config.target) == ("esd-u", "star", 9, 0.002, "esd-u")


@pytest.mark.parametrize("case, args, message", [
    ("nudity on minisd", ["train", "--concept", "nudity", "--out", "{tmp}/o"], "MiniSD does not know the concept 'nudity'"),
    ("unknown method", ["train", "--concept", "circle", "--method", "esd-q", "--out", "{tmp}/o"], "unknown method 'esd-q'"),
    ("empty concept", ["train", "--concept", "", "--out", "{tmp}/o"], "the concept is empty"),
    ("zero steps", ["train", "--concept", "circle", "--steps", "0", "--out", "{tmp}/o"], "--steps must be at least 1"),
    ("not an SD folder", ["train", "--concept", "circle", "--model", "{tmp}", "--out", "{tmp}/o"], "not a diffusers Stable Diffusion folder"),
    ("missing yaml", ["train", "--concept", "circle", "--out", "{tmp}/o", "--config", "{tmp}/none.yaml"], "no config file"),
    ("broken erasure", ["generate", "--prompt", "x", "--model", "{tmp}/broken", "--out", "{tmp}/o"], "is corrupt"),
])
def test_train_bad_input_is_one_line_exit_2_and_writes_nothing(case, args, message, tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "erasure_config.json").write_text("{oops")
    code = run([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, case
    assert message in _error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, message", [
    (["--attack-batch", "0"], "--attack-batch must be at least 1"),
    (["--dtype", "float64"], "float64"),
    (["--gradient-checkpointing", "maybe"], "maybe"),
])
def test_attack_memory_flags_refuse_bad_values_in_one_line(flags, message, tiny_sd_dir, tmp_path, capsys):
    code = run(["attack", "--model", str(tiny_sd_dir), "--suite", "mini", "--limit", "1", "--json",
                str(tmp_path / "a.json"), *flags])
    assert code == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "a.json").exists()
