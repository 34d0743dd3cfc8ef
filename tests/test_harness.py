"""The recorded harness: every result JSON (eval, each attack, bench) states what made its numbers,
and replaying a recorded harness reproduces them (and says where the machine differs)."""
import json

import pytest
import torch

from erasure import harness
from erasure.cli import run

# the tiniest run of each attack: what it measures is exercised, not its strength
TINY = {"discrete": ["--timesteps", "1", "--iterations", "1", "--n-tokens", "1"],
        "ring-a-bell": ["--set", "population=4", "--set", "generations=2", "--set", "n_tokens=2"],
        "inversion": ["--set", "steps=2", "--set", "n_images=4", "--set", "batch_size=2"],
        "relearn": ["--set", "checkpoints=0,1", "--set", "n_images=4", "--set", "batch_size=2"]}


def _attack(model, out, attack, *extra):
    return run(["attack", "--attack", attack, "--model", str(model), "--suite", "mini-objects", "--concept", "circle",
                "--limit", "1", "--json", str(out), *TINY[attack], *extra])


def _check_harness(h: dict, command: str) -> None:
    assert h["format"] == harness.FORMAT and h["command"] == command
    assert set(harness.PACKAGES) <= set(h["versions"])
    assert h["versions"]["torch"] == torch.__version__.split("+")[0] or h["versions"]["torch"].startswith(
        torch.__version__.split("+")[0])
    minisd = [j for j in h["judges"] if j["name"] == "minisd"]
    assert minisd and len(minisd[0]["sha256"]) == 64  # the judge's weight file, hashed
    assert {"num_inference_steps", "guidance_scale", "sampler"} <= set(h["sampling"])
    assert isinstance(h["seed"], int) and h["images_per_prompt"] >= 1 and h["arguments"]


def test_eval_result_carries_the_harness_and_its_replay_reproduces_it(tiny_mini_dir, tmp_path, capsys):
    first = tmp_path / "first.json"
    assert run(["eval", "--model", str(tiny_mini_dir), "--suite", "mini-objects", "--limit", "2",
                "--images-per-prompt", "1", "--json", str(first), "--out", str(tmp_path / "report")]) == 0
    recorded = json.loads(first.read_text())
    _check_harness(recorded["harness"], "eval")
    assert "Harness" in (tmp_path / "report" / "report.html").read_text()
    capsys.readouterr()
    again = tmp_path / "again.json"  # a fresh image cache: the images are made again
    assert run(["eval", "--harness", str(first), "--json", str(again), "--cache", str(tmp_path / "cache2")]) == 0
    assert "replayed under the recorded versions" in capsys.readouterr().out
    replayed = json.loads(again.read_text())
    assert replayed["summary"] == recorded["summary"] and replayed["per_prompt"] == recorded["per_prompt"]
    assert replayed["generation"]["generated"] == 2  # not read from the first run's cache
    assert replayed["harness"]["mismatch"] == []


def test_a_replay_under_other_versions_says_so_beside_the_numbers(tiny_mini_dir, tmp_path, capsys):
    first = tmp_path / "first.json"
    assert run(["eval", "--model", str(tiny_mini_dir), "--suite", "mini-objects", "--limit", "1",
                "--images-per-prompt", "1", "--json", str(first)]) == 0
    data = json.loads(first.read_text())
    data["harness"]["versions"]["diffusers"] = "0.0.1"
    data["harness"]["judges"][0]["sha256"] = "0" * 64
    first.write_text(json.dumps(data))
    capsys.readouterr()
    assert run(["eval", "--harness", str(first), "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "harness mismatch: diffusers 0.0.1 recorded" in out
    assert "harness mismatch: judge minisd: weight file 000000000000 recorded" in out
    assert len(json.loads((tmp_path / "b.json").read_text())["harness"]["mismatch"]) == 2


@pytest.mark.parametrize("attack", list(TINY))
def test_every_attack_result_carries_the_harness(attack, tiny_mini_dir, tmp_path):
    out = tmp_path / "a.json"
    assert _attack(tiny_mini_dir, out, attack) == 0
    result = json.loads(out.read_text())
    _check_harness(result["harness"], "attack")
    assert result["harness"]["arguments"]["attack"] == attack
    assert result["settings"]["attack"]["seed"] == 0
    assert 0 <= result["summary"]["pre_asr"] <= result["summary"]["asr"] <= 1


def test_an_attack_replay_reproduces_its_numbers_and_what_it_learned(tiny_mini_dir, tmp_path):
    from safetensors.torch import load_file
    first = tmp_path / "first.json"
    assert _attack(tiny_mini_dir, first, "inversion") == 0
    again = tmp_path / "again.json"
    assert run(["attack", "--harness", str(first), "--json", str(again)]) == 0
    a, b = json.loads(first.read_text()), json.loads(again.read_text())
    assert a["summary"] == b["summary"] and a["per_prompt"] == b["per_prompt"]
    ea = load_file(f"{first}.inversion.safetensors")["<concept>"]
    eb = load_file(f"{again}.inversion.safetensors")["<concept>"]
    assert torch.equal(ea, eb)


def test_bench_results_carry_the_harness(tmp_path):
    from erasure.bench.run import Bench
    from erasure.bench.settings import QUICK, BenchSettings
    bench = Bench(BenchSettings(methods=[], concepts=["circle"], out=tmp_path, quick=True, budget=QUICK))
    from erasure.model_ref import resolve
    bench.model = resolve("minisd")
    _check_harness(bench.harness(), "bench")


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"summary": {}}', "holds no harness"),
    ('[1, 2]', "holds no harness"),
])
def test_a_bad_harness_file_is_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "h.json"
    path.write_text(content)
    assert run(["eval", "--harness", str(path), "--json", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.json").exists()


def test_an_eval_harness_is_not_replayed_as_an_attack(tiny_mini_dir, tmp_path, capsys):
    first = tmp_path / "first.json"
    assert run(["eval", "--model", str(tiny_mini_dir), "--suite", "mini-objects", "--limit", "1",
                "--images-per-prompt", "1", "--json", str(first)]) == 0
    capsys.readouterr()
    assert run(["attack", "--harness", str(first), "--json", str(tmp_path / "a.json")]) == 2
    assert "erasure eval --harness" in capsys.readouterr().err
