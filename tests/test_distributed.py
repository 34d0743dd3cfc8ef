"""Several processes (gloo on the CPU): `accelerate launch --multi_gpu --num_processes 2 -m erasure ...`
gives what one process gives. (accelerate's `--cpu` flag starts a single process; on a machine
without CUDA, `--multi_gpu` runs torchrun's two processes and erasure asks accelerate for gloo.)"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from erasure.estimate import zero_shares


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "xdg"),
            "ERASURE_CACHE": str(tmp_path / "erasure-cache"), "PYTHONPATH": os.pathsep.join(sys.path)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two(*args: str, tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_port()), "-m", "erasure", *args]


def one(*args: str) -> list[str]:
    return [sys.executable, "-m", "erasure", *args]


def check(cmd: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture()
def prompts(tmp_path) -> Path:
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,object,color,style\na red circle,circle,red,\na striped star,star,,striped\n"
                   "a blue square,square,blue,\na green heart,heart,green,\n")
    return csv


def test_a_killed_two_process_eval_resumes_from_its_cache(tiny_sd_dir, prompts, tmp_path):
    """Two processes, SIGKILLed after their first image and run again, against one process: the
    same summary, per-prompt numbers and image bytes, the rerun generating only what was missing."""
    # 64 images: enough batches after the first that the kill lands before the run ends
    common = ["eval", "--model", str(tiny_sd_dir), "--prompts", str(prompts), "--images-per-prompt", "16", "--steps", "2",
              "--batch-size", "2", "--device", "cpu"]
    cache = tmp_path / "c2"
    proc = subprocess.Popen(two(*common, "--json", str(tmp_path / "two.json"), "--cache", str(cache), tmp_path=tmp_path),
                            env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cache.rglob("*.png")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    _kill_tree(proc)
    kept = {p: p.read_bytes() for p in cache.rglob("*.png")}
    assert kept and not (tmp_path / "two.json").exists(), f"the kill came after the run ({len(kept)} images)"
    check(two(*common, "--json", str(tmp_path / "two.json"), "--cache", str(cache), tmp_path=tmp_path), tmp_path)
    check(one(*common, "--json", str(tmp_path / "one.json"), "--cache", str(tmp_path / "c1")), tmp_path)
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert b["generation"] == {"generated": 64 - len(kept), "cached": len(kept)}  # the rerun made only what was missing
    assert a["summary"] == b["summary"] and a["per_prompt"] == b["per_prompt"]
    assert all(p.read_bytes() == data for p, data in kept.items())
    for f in a["image_files"]:
        assert (tmp_path / "c1" / f).read_bytes() == (cache / f).read_bytes()


def test_a_killed_two_process_attack_resumes_from_its_parts(tiny_mini_dir, tmp_path):
    """Two processes, SIGKILLed once a part is written and run again, against one process: the same
    adversarial prompts, losses and ASR; the parts are merged and removed."""
    common = ["attack", "--model", str(tiny_mini_dir), "--suite", "mini", "--concept", "circle", "--limit", "6",
              "--attack-batch", "1", "--timesteps", "1", "--iterations", "2", "--device", "cpu"]
    out = tmp_path / "two.json"
    proc = subprocess.Popen(two(*common, "--json", str(out), tmp_path=tmp_path), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / "two.json.parts"
    deadline = time.time() + 300
    while not list(parts.glob("rank-*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    _kill_tree(proc)
    assert list(parts.glob("rank-*.json")) and not out.exists()  # killed with some prompts attacked
    check(two(*common, "--json", str(out), tmp_path=tmp_path), tmp_path)
    check(one(*common, "--json", str(tmp_path / "one.json")), tmp_path)
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads(out.read_text())
    assert a["summary"]["n_prompts"] == 6
    assert a["summary"] == b["summary"] and a["per_prompt"] == b["per_prompt"]
    assert not parts.exists()


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "erasure_model.safetensors")), load_file(str(b / "erasure_model.safetensors"))
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def _relative_difference(a: Path, b: Path, base: dict[str, torch.Tensor]) -> float:
    """sum |a - b| / sum |a - base| over the erasures' tensors."""
    x, y = load_file(str(a / "erasure_model.safetensors")), load_file(str(b / "erasure_model.safetensors"))
    assert x.keys() == y.keys()
    apart = sum((x[k].float() - y[k].float()).abs().sum().item() for k in x)
    moved = sum((x[k].float() - base[k].float()).abs().sum().item() for k in x)
    assert moved > 0
    return apart / moved


@pytest.mark.parametrize("method, batch_flag, extra", [
    ("esd-x", "--batch-size", []),
    # the default run keeps one UNet and one text-encoder method; the others run with -m slow
    pytest.param("salun", "--batch-size", ["--n-forget", "4", "--n-retain", "4", "--data-steps", "2"],
                 marks=pytest.mark.slow),
    ("advunlearn", "--retain-batch", ["--attack-steps", "1", "--ddim-steps", "2", "--attack-warmup", "0"]),
    # the discriminator sees the gathered global batch; g_adv and g_ret are averaged before the projection
    pytest.param("doco", "--batch-size", ["--n-anchor", "4", "--n-retain", "4", "--data-steps", "2", "--disc-warmup", "1"],
                 marks=pytest.mark.slow),
    # stage one and stage two, each with its fake-net and generator updates averaged
    pytest.param("sfd", "--batch-size", ["--generator", "teacher", "--two-stage", "true", "--distill-steps", "2"],
                 marks=pytest.mark.slow),
])
def test_training_in_two_processes_equals_one_with_the_global_batch(method, batch_flag, extra, tiny_mini_dir, tmp_path):
    common = ["train", "--concept", "circle", "--method", method, "--model", str(tiny_mini_dir), "--steps", "3",
              "--no-grid", "--device", "cpu", *extra]
    check(two(*common, batch_flag, "2", "--out", str(tmp_path / "two"), tmp_path=tmp_path), tmp_path)
    check(one(*common, batch_flag, "4", "--out", str(tmp_path / "one")), tmp_path)
    check(one(*common, batch_flag, "2", "--out", str(tmp_path / "half")), tmp_path)
    # the change each run made to the base, compared (L1, relative): float noise in the global
    # batch's gradient moves Adam's first steps on near-zero gradients by up to +-lr (DoCo's
    # projection makes many), so the largest element is no measure; the half batch differs by ~1
    base = {f"unet.{k}": v for k, v in load_file(str(tiny_mini_dir / "unet" / "diffusion_pytorch_model.safetensors")).items()}
    base |= {f"text_encoder.{k}": v for k, v in load_file(str(tiny_mini_dir / "text_encoder" / "model.safetensors")).items()}
    assert _relative_difference(tmp_path / "one", tmp_path / "two", base) < 1e-3
    assert _relative_difference(tmp_path / "half", tmp_path / "two", base) > 0.1  # the batch matters: not trivial
    assert json.loads((tmp_path / "two" / "erasure_config.json").read_text())["data_parallel"] == {"processes": 2}


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (torchrun starts its workers in sessions of
    their own, so a process-group kill would miss them): a crash without a chance to clean up."""
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        p.kill()
    psutil.wait_procs(family, timeout=30)


def test_a_killed_two_process_training_resumes_exactly(tiny_mini_dir, tmp_path):
    common = ["train", "--concept", "circle", "--method", "esd-x", "--model", str(tiny_mini_dir), "--steps", "14",
              "--batch-size", "2", "--checkpoint-every", "2", "--no-grid", "--device", "cpu"]
    check(two(*common, "--out", str(tmp_path / "full"), tmp_path=tmp_path), tmp_path)

    cut = tmp_path / "cut"
    state = cut / "checkpoint" / "state.json"
    proc = subprocess.Popen(two(*common, "--out", str(cut), tmp_path=tmp_path), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    _kill_tree(proc)
    step = json.loads(state.read_text())["step"]
    assert 2 <= step < 14 and not (cut / "erasure_config.json").exists()  # killed mid-run, nothing final written

    refused = subprocess.run(one(*common, "--out", str(cut), "--resume"), env=_env(tmp_path), capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "made by 2 process(es), this run has 1" in refused.stderr
    assert "Traceback" not in refused.stderr and state.exists()  # the checkpoint survives the refusal

    check(two(*common, "--out", str(cut), "--resume", tmp_path=tmp_path), tmp_path)
    assert _max_diff(tmp_path / "full", cut) == 0.0
    assert not (cut / "checkpoint").exists()


def _same_except_timing(a, b, path: str = "") -> list[str]:
    """Where two bench results differ, leaving out what measures time and memory (efficiency), the
    ranking (its ties are broken by efficiency), the command line and the per-run cache folders
    of the sample images."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) if k not in ("efficiency", "ranking", "command", "image")
                for d in _same_except_timing(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same_except_timing(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


@pytest.mark.slow  # 86 s: the two-process attack, eval and training resume tests stay in the default run
def test_bench_in_two_processes_killed_and_resumed_equals_one(tiny_mini_dir, tmp_path):
    budget = ("train_scale=1,sampling_steps=2,images_per_prompt=1,images_per_other=1,target_prompts=2,"
              "multilingual_prompts=1,related_per_concept=1,ordinary_prompts=3,attack_prompts=1,attack_timesteps=1,"
              "attack_iterations=1,rab_prompts=1,rab_population=4,rab_generations=2,rab_images=1,sampling_images=1,"
              "robust_prompts=1,inversion_budget=0.01,relearn_steps=2")
    common = ["bench", "--methods", "esd-x,esd-u", "--concepts", "circle,star", "--model", str(tiny_mini_dir),
              "--budget", budget, "--train", "steps=1", "--device", "cpu"]
    two_out = tmp_path / "two"
    proc = subprocess.Popen(two(*common, "--out", str(two_out), tmp_path=tmp_path), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(two_out.glob("erasures/*/*/train.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _kill_tree(proc)
    assert not (two_out / "results.json").exists()  # killed mid-run
    done = {p: p.read_bytes() for t in two_out.glob("erasures/*/*/train.json") for p in t.parent.iterdir() if p.is_file()}
    assert done
    check(two(*common, "--out", str(two_out), tmp_path=tmp_path), tmp_path)
    assert all(p.read_bytes() == data for p, data in done.items())  # what was finished is reused, not retrained
    check(one(*common, "--out", str(tmp_path / "one")), tmp_path)

    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert not _same_except_timing(a, b)
    assert set(a["models"]) == {"base", "esd-x", "esd-u"} and set(a["models"]["esd-x"]) == {"circle", "star"}
    for label in ("esd-x", "esd-u"):
        for concept in ("circle", "star"):
            x, y = (load_file(str(tmp_path / d / "erasures" / label / concept / "erasure_model.safetensors"))
                    for d in ("one", "two"))
            assert all(torch.equal(x[k], y[k]) for k in x)
            for s1, s2 in zip(a["models"][label][concept]["samples"], b["models"][label][concept]["samples"]):
                assert (tmp_path / "one" / s1["image"]).read_bytes() == (tmp_path / "two" / s2["image"]).read_bytes()
    assert not list(two_out.rglob("*.parts")) and not list(two_out.rglob(".*.tmp"))


SHARDED_RUNS = """
import sys
from erasure.config import EraseConfig
from erasure.registry import get_method

model, out = sys.argv[1], sys.argv[2]
def trainer(optimizer):
    config = EraseConfig.from_dict({"method": "sfd", "concept": "circle", "base_model": model, "steps": 3,
                                    "batch_size": 2, "device": "cpu", "generator": "teacher", "optimizer": optimizer,
                                    "checkpoint_every": 1})
    return get_method("sfd").trainer_cls(config)
import json, os
from erasure.estimate import state_bytes
plain = trainer("adam")
plain.train(out + "/plain")
sharded = trainer("adam-sharded")
sharded.train(out + "/sharded")
pairs = {"G": (plain.optimizer, sharded.optimizer), "fake": (plain.fake_optimizer, sharded.fake_optimizer)}
with open(f"{out}/held-{os.environ['RANK']}.json", "w") as f:
    json.dump({name: {"held": len(z.optim.state), "total": len(p.state), "unsharded": state_bytes(p),
                      "held_bytes": sum(v.numel() * v.element_size() for s in z.optim.state.values()
                                        for v in s.values() if hasattr(v, "numel"))}
               for name, (p, z) in pairs.items()}, f)
trainer("adam-sharded").train(out + "/cut", stop_after=2)
trainer("adam-sharded").train(out + "/cut", resume=True)
"""


def test_sharded_adam_states_train_and_resume_as_unsharded(tiny_mini_dir, tmp_path):
    """--optimizer adam-sharded (ZeRO stage 1) for SFD's two optimizers: each process steps its
    share of the weights, the checkpoint gathers the states, a resume deals them out again."""
    script = tmp_path / "runs.py"
    script.write_text(SHARDED_RUNS)
    launch = two("x", tmp_path=tmp_path)
    launch = launch[:launch.index("-m", 3)] + [str(script), str(tiny_mini_dir), str(tmp_path)]
    check(launch, tmp_path)
    held = [json.loads((tmp_path / f"held-{r}.json").read_text()) for r in (0, 1)]
    for name in ("G", "fake"):  # each process holds the Adam states of its share of the weights only
        assert all(0 < h[name]["held"] < h[name]["total"] for h in held)
        assert held[0][name]["held"] + held[1][name]["held"] == held[0][name]["total"]
        # the memory estimate's model of the partition: the very bytes each process holds
        predicted = zero_shares([tuple(x) for x in held[0][name]["unsharded"]], 2)
        assert predicted == [held[0][name]["held_bytes"], held[1][name]["held_bytes"]]
    plain = load_file(str(tmp_path / "plain" / "erasure_model.safetensors"))
    for run in ("sharded", "cut"):
        again = load_file(str(tmp_path / run / "erasure_model.safetensors"))
        assert all(torch.equal(plain[k], again[k]) for k in plain), run
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_without_a_launcher_nothing_is_initialised():
    from erasure import distributed
    assert not distributed.launched() and distributed.processes() == 1 and distributed.is_main()
    assert distributed.deal([1, 2, 3]) == [1, 2, 3] and distributed.gather_json({"a": 1}) == [{"a": 1}]
    assert torch.distributed.is_available() and not torch.distributed.is_initialized()
