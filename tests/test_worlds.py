"""Which world a model belongs to (one rule: the model folder's erasure_world.json), what each
world answers, and the defaults a config takes from its model's world and concept."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.worlds import get_world, is_minisd, world_for, world_name


def test_one_rule_decides_the_world(tiny_sd_dir, tiny_mini_dir, tmp_path):
    assert world_name("minisd") == "mini" and is_minisd("minisd")
    assert world_name(tiny_sd_dir) == "stable-diffusion" and not is_minisd(tiny_sd_dir)
    assert world_name(tiny_mini_dir) == "mini"  # a folder that declares the world
    assert world_name(tmp_path / "no-such-model") == "stable-diffusion"  # a placeholder name: the open world
    erasure_dir = tmp_path / "erasure"  # an erasure belongs to its base model's world
    erasure_dir.mkdir()
    (erasure_dir / "erasure_config.json").write_text(json.dumps(
        {"format": "erasure/1", "method": "esd-x", "base_model": str(tiny_mini_dir), "changed_tensors": [], "config": {}}))
    (erasure_dir / "erasure_model.safetensors").write_bytes(b"")
    assert world_name(erasure_dir) == "mini"
    (tiny_sd_dir / "erasure_world.json").write_text(json.dumps({"world": "atlantis"}))
    try:
        with pytest.raises(UserError, match="unknown world 'atlantis'"):
            world_for(tiny_sd_dir)
    finally:
        (tiny_sd_dir / "erasure_world.json").unlink()


def test_the_open_world_reads_its_catalogue():
    sd = get_world("stable-diffusion")
    for spelling in ("nudity", "NSFW", " nude ", "naked"):
        assert sd.canonical(spelling) == "nudity"
        assert sd.default_anchor(spelling) == "a person wearing clothes"
    assert sd.canonical("Vincent van Gogh") == "van gogh"
    assert sd.canonical("a giraffe") is None
    with pytest.raises(UserError, match="no default anchor for 'a giraffe'"):
        sd.default_anchor("a giraffe")
    with pytest.raises(UserError, match="no judge knows the concept 'van gogh'"):
        sd.concept_judge("van gogh")
    erase, keep = sd.example_prompts("nsfw")  # the catalogue's examples, any alias
    assert "nude" in erase[0] and "dress" in keep[0]
    with pytest.raises(UserError, match="siblings"):
        sd.siblings("nudity")
    assert sd.ordinary_prompts() is None and not sd.captions


def test_the_minisd_world_knows_its_concepts():
    mini = get_world("mini")
    assert mini.canonical("a round shape") == "circle" and mini.attribute("disk") == ("object", "circle")
    assert mini.attribute("red") == ("color", "red") and mini.attribute("a red circle") is None
    assert mini.default_anchor("circle") == "square" and mini.default_anchor("cross") == "circle"
    assert mini.default_anchor("plain") == "striped" and mini.default_anchor("dotted") == "plain"
    assert mini.substitute("a red disk, plain style", "circle", "square") == "a red square, plain style"
    assert mini.without_concept("a picture of a red disk, plain style", "circle") == "a picture of a red, plain style"
    assert mini.names_concept("a blue round shape", "circle") and not mini.names_concept("a blue star", "circle")
    assert mini.without_concepts(["a red disk", "a red star"], ["circle"]) == ["a red star"]
    with pytest.raises(UserError, match="MiniSD does not know the concept 'giraffe'"):
        mini.check_concept("giraffe")
    mini.check_concept("striped")  # known: no error
    assert set(mini.concept_choices()) >= {"circle", "red", "striped"}


def test_configs_take_their_worlds_defaults_under_what_the_user_sets(tiny_sd_dir, tiny_mini_dir):
    on = lambda model, **kw: EraseConfig.from_dict({"method": "esd-x", "concept": "circle", "base_model": str(model), **kw})  # noqa: E731
    assert (on("minisd").steps, on("minisd").lr, on("minisd").baseline) == (300, 5e-4, "siblings")
    assert (on(tiny_mini_dir).steps, on(tiny_mini_dir).baseline) == (300, "siblings")  # the world, not the name
    assert (on(tiny_sd_dir).steps, on(tiny_sd_dir).lr, on(tiny_sd_dir).baseline) == (1000, 1e-5, "empty")  # the paper's
    assert on("minisd", steps=7).steps == 7  # what the user set wins
    salun = lambda concept: EraseConfig.from_dict({"method": "salun", "concept": concept, "base_model": str(tiny_sd_dir)})  # noqa: E731
    assert (salun("nudity").alpha, salun("nudity").steps) == (0.1, 100)  # SalUn's nudity recipe ...
    assert (salun("NSFW").alpha, salun("nude").steps) == (0.1, 100)  # ... under any of nudity's names
    assert salun("van gogh").alpha == 0.5


def _help(method: str | None) -> str:
    argv = [sys.executable, "-m", "erasure.cli", "train", "--out", "x", "--help"] + (["--method", method] if method else [])
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_train_help_shows_the_shared_settings_and_the_methods_own_once():
    salun = _help("salun")
    for flag in ("--steps", "--lr", "--seed", "--alpha", "--mask-ratio", "--n-forget", "--n-retain"):
        assert salun.count(f"  {flag} ") + salun.count(f"  {flag}\n") == 1, flag
    for foreign in ("--disc-lr", "--remain-prompts", "--retain-prompts-file", "--negative-guidance", "--adv-tokens"):
        assert foreign not in salun, foreign
    assert "self-generated retain images (paper: 800)" in salun  # SalUn's own help text, not DoCo's
    assert "salun settings" in salun and "settings of every method" in salun
    esd = _help(None)  # no --method: esd-x, the default
    assert "--negative-guidance" in esd and "--alpha" not in esd
    assert "MiniSD: siblings" in esd  # a world's default is shown beside the paper's


def test_a_foreign_setting_is_still_a_one_line_error(capsys):
    from erasure.cli import run
    assert run(["train", "--method", "salun", "--concept", "circle", "--disc-lr", "1e-3", "--out", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "erasure: error: --disc-lr is not a setting of method salun; see erasure train --method salun --help"
