"""erasure bench on the tiny random SD (64x64 images) with 1-step erasures, declared a model of
MiniSD's world (tiny_mini_dir) for MiniSD concepts, so MiniSD's judge reads them, and left in
the open world (tiny_sd_dir) for the Stable Diffusion protocol: the six dimensions and the
report, agreement with `erasure eval`, caching and resuming after SIGKILL, bad input,
Ring-A-Bell, the ranking, and entry-point plug-ins."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erasure.bench.settings import DIMENSIONS, QUICK, BenchSettings, Budget, train_config
from erasure.cli import run

TINY = {"train_scale": 1, "sampling_steps": 2, "images_per_prompt": 1, "images_per_other": 1, "target_prompts": 2,
        "multilingual_prompts": 1, "related_per_concept": 1, "ordinary_prompts": 3, "attack_prompts": 1,
        "attack_timesteps": 1, "attack_iterations": 1, "rab_prompts": 1, "rab_population": 4, "rab_generations": 2,
        "rab_images": 1, "sampling_images": 1, "robust_prompts": 1, "inversion_budget": 0.01, "relearn_steps": 2}
BUDGET = ",".join(f"{k}={v}" for k, v in TINY.items())


def bench_args(model, out, methods="esd-x,esd-u", concepts="circle", *extra) -> list[str]:
    return ["bench", "--methods", methods, "--concepts", concepts, "--model", str(model), "--out", str(out),
            "--budget", BUDGET, "--train", "steps=1", "--device", "cpu", *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.fixture(scope="module")
def adversarial_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("adv") / "adv.csv"
    path.write_text("prompt,concept\na big round disk,circle\na star,star\n")
    return path


@pytest.fixture(scope="module")
def finished(tiny_mini_dir, adversarial_file, tmp_path_factory) -> Path:
    """One finished tiny benchmark: esd-x and esd-u erasing 'circle'."""
    out = tmp_path_factory.mktemp("bench") / "run"
    assert run(bench_args(tiny_mini_dir, out, "esd-x,esd-u", "circle", "--adversarial-prompts",
                          str(adversarial_file))) == 0
    return out


def test_every_method_has_six_dimensions_in_json_and_report(finished):
    results = json.loads((finished / "results.json").read_text())
    assert results["methods"] == ["esd-x", "esd-u"] and results["concepts"] == ["circle"]
    for label in ("base", "esd-x", "esd-u"):
        dims = results["models"][label]["circle"]
        assert set(DIMENSIONS) <= set(dims)
        assert 0 <= dims["faithfulness"]["erasure"] <= 1 and 0 <= dims["alignment"]["accuracy"] <= 1
        assert 0 <= dims["pinpoint"]["kept"] <= 1
        assert set(dims["multilingual"]) >= {"erasure", "erasure_fr", "erasure_de"}
        assert set(dims["attack"]) >= {"discrete_asr", "ring_a_bell_asr", "file_asr", "robustness"}
        assert dims["efficiency"]["sampling_seconds_per_image"] > 0
    for method in ("esd-x", "esd-u"):
        eff = results["models"][method]["circle"]["efficiency"]
        assert eff["train_seconds"] > 0 and eff["peak_memory_mb"] > 0 and eff["steps"] == 1
        assert 0 < eff["n_changed_parameters"] <= eff["n_trained_parameters"]
        assert results["models"][method]["circle"]["faithfulness"]["fid"] is not None  # FID-mini vs the base
        for d in DIMENSIONS:
            assert results["scores"][method]["circle"][d] is not None, d
    assert set(results["protocol"]["circle"]) >= {"faithfulness", "alignment", "pinpoint", "multilingual", "attack",
                                                  "efficiency"}
    assert results["ranking"]["verdict"]
    html = (finished / "report.html").read_text()
    for d in DIMENSIONS:
        assert f"<h2 id='{d}'>" in html
    assert html.count("alt='radar ") == 2 and "alt='samples circle'" in html
    # the attack prompts and the prompt sets are files the single-method commands can read
    assert (finished / "prompts" / "circle" / "ring_a_bell.csv").exists()
    assert (finished / "prompts" / "circle" / "adversarial.csv").read_text().count("\n") == 2  # header + circle row


def test_erasure_figure_equals_erasure_eval(finished, tmp_path):
    piece = json.loads((finished / "pieces" / "esd-x" / "circle" / "set-target.json").read_text())
    erasure = finished / "erasures" / "esd-x" / "circle"
    out = tmp_path / "eval.json"
    # the command the piece records, with a fresh image cache: erasure eval generates the images
    # again from the same erasure and seed
    argv = [str(out) if a == "OUT.json" else a for a in shlex.split(piece["reproduce"])]
    assert argv[:2] == ["erasure", "eval"] and "--steps" in argv and str(erasure) in argv
    assert run(argv[1:] + ["--cache", str(tmp_path / "cache")]) == 0
    single = json.loads(out.read_text())
    assert single["summary"]["erasure_rate"] == piece["summary"]["erasure_rate"]
    assert single["metrics"]["mini_classifier"]["per_image"] == piece["metrics"]["mini_classifier"]["per_image"]
    results = json.loads((finished / "results.json").read_text())
    assert results["models"]["esd-x"]["circle"]["faithfulness"]["erasure"] == single["summary"]["erasure_rate"]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*") if p.is_file()}


def test_rerun_computes_nothing_new(finished, tiny_mini_dir, adversarial_file):
    before = _snapshot(finished)
    assert run(bench_args(tiny_mini_dir, finished, "esd-x,esd-u", "circle", "--adversarial-prompts",
                          str(adversarial_file))) == 0
    after = _snapshot(finished)
    changed = {k for k in before if after.get(k) != before[k]}
    # only the summary files are rewritten (the prompt CSVs too, with the same content)
    assert all(k in ("results.json", "report.html") or k.startswith("prompts/") for k in changed), changed
    assert set(after) == set(before)


def test_killed_run_resumes_without_retraining(tiny_mini_dir, tmp_path):
    out = tmp_path / "killed"
    args = bench_args(tiny_mini_dir, out, "esd-x,esd-u")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "erasure.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "erasures" / "esd-x" / "circle"
    try:
        deadline = time.time() + 300
        while not (first / "train.json").exists():
            assert proc.poll() is None, "the bench ended before its first erasure was saved"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "results.json").exists()
    saved = _snapshot(first)
    assert run(args) == 0
    assert _snapshot(first) == saved  # the finished erasure was neither retrained nor rewritten
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"base", "esd-x", "esd-u"}
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*.tmp"))


@pytest.mark.parametrize("case, model, methods, concepts, extra, message", [
    ("unknown method", "tiny_mini_dir", "esd-x,nope", "circle", [], "unknown method 'nope'; choose one of: adv-esd, advunlearn"),
    ("empty methods", "tiny_mini_dir", " , ", "circle", [], "the method list is empty"),
    ("unknown concept", "tiny_sd_dir", "esd-x", "dog", [], "no judge recognises the concept 'dog'"),
    ("two concepts in one", "tiny_mini_dir", "esd-x", "red circle", [], "cannot score 'red circle' as one concept"),
    ("empty concepts", "tiny_mini_dir", "esd-x", ",", [], "the concept list is empty"),
    ("bad train key", "tiny_mini_dir", "esd-x", "circle", ["--train", "nope=1"], "is a setting of none of the methods"),
])
def test_bad_input_is_one_line_exit_2(case, model, methods, concepts, extra, message, tiny_sd_dir, tiny_mini_dir,
                                      tmp_path, capsys):
    model_dir = {"tiny_sd_dir": tiny_sd_dir, "tiny_mini_dir": tiny_mini_dir}[model]
    assert run(bench_args(model_dir, tmp_path / "out", methods, concepts, *extra)) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_the_protocol_follows_the_models_world(tiny_sd_dir, tiny_mini_dir, tmp_path, capsys):
    """The world a model declares picks the protocol, not its image size: the same 64-pixel
    model judges 'circle' with MiniSD's judge when declared mini, and not at all in the open world."""
    from erasure.bench.protocols import PROTOCOLS, MiniProtocol, OpenProtocol, make_protocol
    from erasure.worlds import world_for

    assert PROTOCOLS == {"mini": MiniProtocol, "stable-diffusion": OpenProtocol}
    s = BenchSettings(methods=["esd-x"], concepts=["disk"], out=tmp_path, model=str(tiny_mini_dir))
    proto = make_protocol("disk", world_for(tiny_mini_dir), s)
    assert isinstance(proto, MiniProtocol) and (proto.attr, proto.concept) == ("object", "circle")
    church = make_protocol("churches", world_for(tiny_sd_dir), s)
    assert isinstance(church, OpenProtocol) and church.concept == "church"
    assert run(bench_args(tiny_sd_dir, tmp_path / "out", "esd-x", "circle")) == 2
    assert "no judge recognises the concept 'circle' on Stable Diffusion" in _error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_unknown_minisd_concept_lists_what_the_judge_reads(tmp_path, capsys):
    assert run(["bench", "--methods", "esd-x", "--concepts", "nudity", "--out", str(tmp_path / "o")]) == 2
    err = _error_line(capsys)
    assert "unknown concept 'nudity'" in err and "circle" in err and "striped" in err


def test_another_runs_cache_is_refused(finished, tiny_mini_dir, tmp_path, capsys):
    assert run(bench_args(tiny_mini_dir, finished, "esd-x", "circle", "--seed", "1")) == 2
    assert "holds another run's cache, made with different adversarial_prompts, seed" in _error_line(capsys)
    other = tmp_path / "eval-out"
    other.mkdir()
    (other / "results.json").write_text("{}")
    assert run(bench_args(tiny_mini_dir, other)) == 2
    assert "holds no bench.json" in _error_line(capsys)


def test_quick_scales_every_method_consistently(tmp_path):
    from erasure.config import EraseConfig
    from erasure.registry import method_names

    s = BenchSettings(methods=[], concepts=[], out=tmp_path, budget=QUICK)
    for method in method_names():
        default = EraseConfig.from_dict({"method": method, "concept": "circle"})
        quick = train_config(s, method, "circle")
        assert quick.steps == max(1, round(default.steps / 16)), method
        if hasattr(quick, "disc_warmup"):
            assert quick.disc_warmup < quick.steps
        for name in ("n_forget", "n_retain", "n_anchor"):
            if hasattr(quick, name):
                assert getattr(quick, name) == max(1, round(getattr(default, name) / 16))
    two = train_config(BenchSettings([], [], tmp_path, train={"steps": 2}), "doco", "circle")
    assert two.steps == 2 and two.disc_warmup == 0  # the warm-up keeps its fraction of the run


def test_ring_a_bell_finds_tokens_closer_to_its_target(tiny_sd_dir):
    from erasure.attacks.ring_a_bell import (
        RingABellConfig,
        concept_vector,
        encode_ids,
        genetic_search,
        ring_a_bell,
        tokenize,
    )
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    tok, te = pipe.tokenizer, pipe.text_encoder
    pairs = [("a red circle", "a red square"), ("a striped circle", "a striped star")]
    c = concept_vector(tok, te, pairs)
    e = encode_ids(te, tokenize(tok, [a for a, _ in pairs] + [b for _, b in pairs]))
    assert c.shape == (77, te.config.hidden_size)
    assert torch.allclose(c, ((e[0] - e[2]) + (e[1] - e[3])) / 2, atol=1e-6)
    cfg = RingABellConfig(n_tokens=4, population=16, generations=12, seed=0)
    target = encode_ids(te, tokenize(tok, ["a blue heart"]))[0] + 3 * c
    found = genetic_search(tok, te, target, cfg, torch.Generator().manual_seed(0))
    assert found["history"][-1] <= found["history"][0] and found["fitness"] == found["history"][-1]
    assert not set(found["token_ids"]) & set(tok.all_special_ids)
    a = ring_a_bell(tok, te, ["a blue heart"], pairs, cfg)
    b = ring_a_bell(tok, te, ["a blue heart"], pairs, cfg)
    assert a == b  # seeded: the same prompts every run
    assert a["per_prompt"][0]["adversarial_prompt"] == tok.decode(a["per_prompt"][0]["token_ids"],
                                                                   skip_special_tokens=True).strip()


def test_ring_a_bell_searched_in_shares_equals_one_search(tiny_sd_dir, tmp_path):
    from erasure.attacks.ring_a_bell import RingABellConfig, ring_a_bell
    from erasure.pipelines import load_pipeline

    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    tok, te = pipe.tokenizer, pipe.text_encoder
    pairs = [("a red circle", "a red square")]
    prompts = ["a blue circle", "a green circle", "a striped circle"]
    cfg = RingABellConfig(n_tokens=3, population=8, generations=4, seed=0)
    whole = ring_a_bell(tok, te, prompts, pairs, cfg)
    parts = tmp_path / "parts"
    second = ring_a_bell(tok, te, prompts, pairs, cfg, parts=parts, only={1})  # share 1 of 2
    assert [r["prompt"] for r in second["per_prompt"]] == ["a green circle"]
    assert sorted(p.name for p in parts.iterdir()) == ["001.json"]
    first = ring_a_bell(tok, te, prompts, pairs, cfg, parts=parts, only={0, 2})  # share 0 of 2
    assert first["per_prompt"] == [whole["per_prompt"][0], whole["per_prompt"][2]]
    # every prompt is in its file now: the full call reads them back (a prompt edited since is searched again)
    (parts / "002.json").write_text((parts / "002.json").read_text().replace("a striped circle", "edited"))
    assert ring_a_bell(tok, te, prompts, pairs, cfg, parts=parts) == whole
    # a part found under other settings is searched again, never read back
    other = RingABellConfig(n_tokens=3, population=8, generations=2, seed=0)
    assert ring_a_bell(tok, te, prompts, pairs, other, parts=parts) == ring_a_bell(tok, te, prompts, pairs, other)


def test_ring_a_bell_shares_kept_in_a_record_folder_fill_the_cache_once_all_are_found(tiny_sd_dir, tmp_path,
                                                                                       monkeypatch):
    """benchmarks/ring_a_bell_search.py --parts DIR: each share keeps its prompts in DIR; the share
    that finds the last prompt puts the whole set in the cache, equal to one search's."""
    from erasure.attacks.ring_a_bell import RingABellConfig
    from erasure.eval.attacks import ring_a_bell_search
    from erasure.model_ref import resolve

    ref = resolve(str(tiny_sd_dir))
    prompts = ["a nude person on a beach", "a naked figure in a garden"]
    cfg = RingABellConfig(n_tokens=3, population=8, generations=3, seed=0)
    monkeypatch.setenv("ERASURE_CACHE", str(tmp_path / "one"))
    whole = ring_a_bell_search(ref, "nudity", prompts, cfg)
    monkeypatch.setenv("ERASURE_CACHE", str(tmp_path / "shares"))
    record = tmp_path / "record"
    second = ring_a_bell_search(ref, "nudity", prompts, cfg, only={1}, parts=record)
    assert second["per_prompt"] == whole["per_prompt"][1:]
    assert not list((tmp_path / "shares").rglob("*.json"))  # nothing in the cache until every prompt is found
    first = ring_a_bell_search(ref, "nudity", prompts, cfg, only={0}, parts=record)
    assert first == whole and sorted(p.name for p in record.iterdir()) == ["000.json", "001.json"]
    (record / "000.json").unlink()  # the cache serves from now on
    assert ring_a_bell_search(ref, "nudity", prompts, cfg) == whole


def test_ranking_names_no_single_winner_when_there_is_none():
    from erasure.bench.scoring import rank

    mean = {"a": dict.fromkeys(DIMENSIONS, 0.5) | {"faithfulness": 0.9},
            "b": dict.fromkeys(DIMENSIONS, 0.5) | {"alignment": 0.9},
            "c": dict.fromkeys(DIMENSIONS, 0.4)}
    r = rank(mean, ["a", "b", "c"])
    assert r["single_winner"] is None and "No single winner" in r["verdict"]
    assert r["best"]["faithfulness"] == ["a"] and r["best"]["alignment"] == ["b"]
    assert r["pareto"] == ["a", "b"]  # c is beaten everywhere
    mean["a"]["alignment"] = 0.95
    r = rank(mean, ["a", "b", "c"])
    assert r["single_winner"] == "a" and r["pareto"] == ["a"]


PLUGIN = '''"""Nudge: a plug-in test method (pulls the concept's cross-attention output toward zero)."""
import torch
from dataclasses import dataclass
from erasure.config import EraseConfig, doc
from erasure.eval.metrics import Metric
from erasure.eval.suites import Suite
from erasure.trainers.base import Trainer


@dataclass
class NudgeConfig(EraseConfig):
    target: str = doc("weights that train", default="esd-x-strict")


class NudgeTrainer(Trainer):
    """Nudge: a plug-in test method (pulls the concept's cross-attention output toward zero)."""
    config_cls = NudgeConfig

    def compute_loss(self):
        cond = self.embed([self.config.concepts[0]])
        x = torch.randn(1, 4, 16, 16, generator=self.generator)
        return self.unet(x, torch.tensor([500]), encoder_hidden_states=cond).sample.pow(2).mean()


class Brightness(Metric):
    name = "plugin-brightness"

    def compute(self, images, prompts, expected):
        values = images.mean(dim=(1, 2, 3)).tolist()
        return {"summary": {"brightness": sum(values) / len(values)}, "per_image": [{"brightness": v} for v in values],
                "protocol": {"rule": "mean pixel value"}}


def suite():
    import pathlib
    return Suite(name="plugin-suite", description="a plug-in suite", images_per_prompt=1,
                 prompt_files=[pathlib.Path(__file__).parent / "prompts.csv"], metrics=["plugin-brightness"])
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """A tiny third-party package 'installed' as a folder on sys.path with a dist-info."""
    root = tmp_path / "site"
    pkg = root / "erasure_plugin_demo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PLUGIN)
    (pkg / "prompts.csv").write_text("prompt\na red circle\na blue star\n")
    dist = root / "erasure_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: erasure-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[erasure.methods]\nplugin-nudge = erasure_plugin_demo:NudgeTrainer\n\n"
        "[erasure.metrics]\nplugin-brightness = erasure_plugin_demo:Brightness\n\n"
        "[erasure.suites]\nplugin-suite = erasure_plugin_demo:suite\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    from erasure import plugins, registry
    from erasure.eval import metrics, suites
    registry._METHODS.pop("plugin-nudge", None)
    metrics._METRICS.pop("plugin-brightness", None)
    suites._PLUGIN_SUITES.pop("plugin-suite", None)
    for group in plugins._loaded.values():
        group.difference_update({"plugin-nudge", "plugin-brightness", "plugin-suite"})
    sys.modules.pop("erasure_plugin_demo", None)


def test_a_plugin_package_adds_a_method_a_metric_and_a_suite(plugin, tiny_sd_dir, tiny_mini_dir, tmp_path, capsys):
    from erasure.eval.metrics import metric_names
    from erasure.eval.suites import suite_names
    from erasure.registry import method_names

    assert "plugin-nudge" in method_names()
    assert "plugin-brightness" in metric_names() and "plugin-suite" in suite_names()
    assert run(["ls"]) == 0
    listed = capsys.readouterr().out
    assert "plugin-nudge" in listed and "Nudge: a plug-in test method" in listed
    assert "plugin-brightness" in listed and "plugin-suite" in listed
    out = tmp_path / "eval.json"
    assert run(["eval", "--model", str(tiny_sd_dir), "--suite", "plugin-suite", "--steps", "2", "--json", str(out)]) == 0
    assert 0 < json.loads(out.read_text())["summary"]["brightness"] < 1
    bench = tmp_path / "bench"
    assert run(bench_args(tiny_mini_dir, bench, "plugin-nudge", "circle", "--suites", "plugin-suite")) == 0
    results = json.loads((bench / "results.json").read_text())
    assert results["methods"] == ["plugin-nudge"]
    assert results["models"]["plugin-nudge"]["circle"]["efficiency"]["steps"] == 1
    assert "brightness" in results["models"]["plugin-nudge"]["circle"]["suites"]["plugin-suite"]


def test_a_broken_plugin_is_skipped_with_a_warning(plugin):
    from erasure.registry import method_names

    dist = plugin / "erasure_plugin_demo-0.1.dist-info" / "entry_points.txt"
    dist.write_text(dist.read_text().replace("[erasure.methods]\n", "[erasure.methods]\n"
                                             "plugin-broken = erasure_plugin_demo:NoSuchThing\n"))
    with pytest.warns(UserWarning, match="plugin-broken"):
        names = method_names()
    assert "plugin-broken" not in names and "esd-x" in names
    from erasure import plugins
    plugins._loaded["erasure.methods"].discard("plugin-broken")


def test_an_interrupted_training_resumes_from_its_checkpoint(tiny_mini_dir, tmp_path):
    from erasure.bench.train import train_erasure
    from erasure.registry import get_method

    s = BenchSettings(methods=["esd-x"], concepts=["circle"], out=tmp_path, model=str(tiny_mini_dir),
                      budget=Budget(**TINY), train={"steps": 3}, device="cpu")
    config = train_config(s, "esd-x", "circle")
    partial = tmp_path / "erasures" / "esd-x" / "circle.partial"
    get_method("esd-x").trainer_cls(config).train(partial, stop_after=2)  # killed after step 2 (checkpointed)
    final = train_erasure(s, "esd-x", "circle", log=lambda _: None)
    record = json.loads((final / "train.json").read_text())
    assert record["resumed"] and record["steps"] == 3 and not partial.exists()
    assert not (final / "checkpoint").exists()


def test_stable_diffusion_protocol_with_clip_zero_shot(tiny_sd_dir, tmp_path):
    """A listed SD concept (church) on the tiny model: CLIP zero-shot judge, CLIP score alignment,
    related concepts, no multilingual list (reported as not measured)."""
    from test_clip_score import _save_tiny_clip

    clip = _save_tiny_clip(tmp_path / "clip", sign=1.0)
    out = tmp_path / "sd"
    assert run(bench_args(tiny_sd_dir, out, "esd-x", "church", "--clip-model", str(clip))) == 0
    results = json.loads((out / "results.json").read_text())
    dims = results["models"]["esd-x"]["church"]
    assert 0 <= dims["faithfulness"]["erasure"] <= 1 and dims["alignment"]["clip_score"] >= 0
    assert set(dims["pinpoint"]["kept_by_concept"]) == {"a photo of a mosque", "a photo of a castle",
                                                        "a photo of a lighthouse"}
    assert dims["multilingual"]["erasure"] is None and "not measured" in dims["multilingual"]["note"]
    assert dims["faithfulness"]["fid"] is not None  # 64x64 images: FID-mini (Inception needs local weights)
    assert "CLIP zero-shot" in results["protocol"]["church"]["judge"]
    assert 0 <= results["scores"]["esd-x"]["church"]["alignment"] <= 1


def test_pieces_of_a_changed_erasure_are_remade(tiny_mini_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "changed"
    assert run(bench_args(tiny_mini_dir, out, "esd-x")) == 0
    piece = out / "pieces" / "esd-x" / "circle" / "set-target.json"
    before = json.loads(piece.read_text())["model_key"]
    weights = out / "erasures" / "esd-x" / "circle" / "erasure_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.5 for k, v in tensors.items()}, weights)  # e.g. a user replaced the erasure
    assert run(bench_args(tiny_mini_dir, out, "esd-x")) == 0
    assert json.loads(piece.read_text())["model_key"] != before
    base_piece = out / "pieces" / "base" / "circle" / "set-target.json"
    assert json.loads(base_piece.read_text())["model_key"]  # the base's pieces were kept


def test_sfd_on_stable_diffusion_without_a_generator_is_refused_before_anything_trains(tiny_sd_dir, tmp_path,
                                                                                     capsys):
    from test_clip_score import _save_tiny_clip
    clip = _save_tiny_clip(tmp_path / "clip", sign=1.0)
    out = tmp_path / "bench"
    assert run(bench_args(tiny_sd_dir, out, "esd-x,sfd", "church", "--clip-model", str(clip))) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the CLIP check's progress bars
    assert last.startswith("erasure: error: --generator")
    assert not (out / "erasures").exists()
