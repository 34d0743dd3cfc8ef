"""A training run that dies, diverges or is stopped with Ctrl-C leaves a checkpoint --resume can
trust, and never a NaN erasure: checkpoints are committed as one verified unit, NaN/inf weights
stop the run before anything is written, and SIGINT stops at a step boundary with a checkpoint."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from erasure.cli import run
from erasure.config import EraseConfig
from erasure.erasure_files import WEIGHTS_NAME
from erasure.files import load_tensors
from erasure.registry import get_method
from erasure.trainers.base import TrainingInterrupted

# ESD-x on the tiny model, its trajectory sampling cut down so that a step takes milliseconds; a
# fresh trajectory every step (refresh 1), so that a run's numbers do not depend on --steps (a
# cached window is read ahead up to the last step), which a resume here changes
QUICK = ["--concept", "circle", "--method", "esd-x", "--lr", "1e-3", "--ddim-steps", "2", "--refresh-every", "1",
         "--no-grid"]


def settings(base, **kw) -> EraseConfig:
    return EraseConfig.from_dict({"method": "esd-x", "concept": "circle", "anchor": "a square", "base_model": str(base),
                                  "steps": 4, "lr": 1e-3, "checkpoint_every": 0, "ddim_steps": 2,
                                  "refresh_every": 1, **kw})


def trainer(config):
    return get_method(config.method).trainer_cls(config)


def train_args(base, out, steps, *extra) -> list[str]:
    return ["train", *QUICK, "--model", str(base), "--steps", str(steps), "--out", str(out), *extra]


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def step_of(folder: Path) -> int:
    return json.loads((folder / "state.json").read_text())["step"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_sd_dir, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The trained weights of a 4-step run that nothing interrupted."""
    full = trainer(settings(tiny_sd_dir))
    full.train(tmp_path_factory.mktemp("full") / "out")
    return {k: v.detach().clone() for k, v in full.trainable.items()}


def assert_same(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(weights[k].detach(), v), k


def damage(folder: Path, how: str) -> None:
    state = folder / "state.safetensors"
    if how == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif how == "one byte changed":  # same size: only the sha256 tells
        data = bytearray(state.read_bytes())
        data[-1] ^= 0xFF
        state.write_bytes(bytes(data))
    elif how == "no state.json":
        (folder / "state.json").unlink()
    elif how == "state.json cut":
        meta = folder / "state.json"
        meta.write_text(meta.read_text()[:50])
    elif how == "unverified and truncated":  # a checkpoint made before the sha256 was recorded
        meta = json.loads((folder / "state.json").read_text())
        del meta["safetensors"]
        (folder / "state.json").write_text(json.dumps(meta))
        state.write_bytes(state.read_bytes()[:100])


# ----------------------------------------------------------------- (a) torn checkpoint: the previous one
@pytest.mark.parametrize("how", ["truncated", "one byte changed", "unverified and truncated"])
def test_a_torn_checkpoint_resumes_from_the_previous_one(how, tiny_sd_dir, tmp_path, uninterrupted, capsys):
    config = settings(tiny_sd_dir)
    cut = tmp_path / "cut"
    trainer(config).train(cut, stop_after=1)
    step1 = shutil.copytree(cut / "checkpoint", tmp_path / "step1")
    trainer(config).train(cut, resume=True, stop_after=2)
    assert step_of(cut / "checkpoint") == 2
    assert sorted(p.name for p in cut.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    # the disk as a run that died while committing its step-3 checkpoint could leave it: the
    # previous checkpoint kept aside, `checkpoint` torn, the dead run's scratch folder
    shutil.move(step1, cut / "checkpoint.prev")
    damage(cut / "checkpoint", how)
    scratch = cut / "checkpoint.new-999-deadbeef"
    scratch.mkdir()
    (scratch / "state.safetensors").write_bytes(b"half")
    mine = [cut / "checkpoint.notes", cut / "checkpoint.new-mine"]  # not our scratch names: kept
    for folder in mine:
        folder.mkdir()
    capsys.readouterr()

    resumed = trainer(config)
    resumed.train(cut, resume=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    assert "resuming from the previous checkpoint" in warnings[0] and "at step 1" in warnings[0]
    assert str(cut / "checkpoint.prev") in warnings[0]
    assert_same(resumed.trainable, uninterrupted)  # resumed from step 1, exactly
    assert not any(p.exists() for p in (cut / "checkpoint", cut / "checkpoint.prev", scratch))
    assert all(folder.is_dir() for folder in mine)
    assert (cut / WEIGHTS_NAME).exists()


def test_erasure_train_resume_falls_back_on_the_previous_checkpoint(tiny_sd_dir, tmp_path, capsys):
    # the CLI's --out check accepts a `checkpoint/` without state.json when a commit was under way
    # (checkpoint.prev beside it), and the run resumes from checkpoint.prev as the trainer does
    from erasure.cli import _train_config, build_parser
    cut, full = tmp_path / "cut", tmp_path / "full"
    config = _train_config(build_parser().parse_args(train_args(tiny_sd_dir, cut, 3)))
    trainer(config).train(cut, stop_after=1)
    step1 = shutil.copytree(cut / "checkpoint", tmp_path / "step1")
    trainer(config).train(cut, resume=True, stop_after=2)
    shutil.move(step1, cut / "checkpoint.prev")
    damage(cut / "checkpoint", "no state.json")
    capsys.readouterr()
    assert run(train_args(tiny_sd_dir, cut, 3, "--resume")) == 0
    assert "resuming from the previous checkpoint" in capsys.readouterr().err
    assert run(train_args(tiny_sd_dir, full, 3)) == 0
    assert_same(load_tensors(cut / WEIGHTS_NAME), load_tensors(full / WEIGHTS_NAME))


def test_an_old_checkpoint_without_a_sha256_still_resumes(tiny_sd_dir, tmp_path, uninterrupted):
    config = settings(tiny_sd_dir)
    trainer(config).train(tmp_path / "cut", stop_after=2)
    state = tmp_path / "cut" / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    assert set(meta["safetensors"]) == {"bytes", "sha256"}
    del meta["safetensors"]
    state.write_text(json.dumps(meta))
    resumed = trainer(config)
    resumed.train(tmp_path / "cut", resume=True)
    assert_same(resumed.trainable, uninterrupted)


# ----------------------------------------------------------------- (b) nothing usable: one line, exit 2
@pytest.mark.parametrize("previous", [False, True])
def test_no_usable_checkpoint_is_a_one_line_error(previous, tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "out"
    trainer(settings(tiny_sd_dir)).train(out, stop_after=1)
    if previous:  # the previous one is torn too
        shutil.copytree(out / "checkpoint", out / "checkpoint.prev")
        damage(out / "checkpoint.prev", "no state.json")
    damage(out / "checkpoint", "state.json cut")
    capsys.readouterr()
    assert run(train_args(tiny_sd_dir, out, 4, "--resume")) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith(f"erasure: error: --resume: no usable checkpoint in {out}: ")
    assert f"{out / 'checkpoint'}: state.json does not parse" in line and "run without --resume" in line
    assert (f"{out / 'checkpoint.prev'}: no state.json" in line) == previous
    assert not (out / WEIGHTS_NAME).exists()


# ----------------------------------------------------------------- (c) NaN/inf weights: nothing saved
def test_an_infinite_lr_stops_before_a_nan_erasure_is_written(tiny_sd_dir, tmp_path, capsys):
    """One step at lr inf: the loss and the gradient were finite, the weights are not."""
    out = tmp_path / "out"
    assert run(train_args(tiny_sd_dir, out, 1, "--lr", "inf")) == 2
    line = last_line(capsys.readouterr().err)
    assert line.startswith("erasure: error: the trained weights became NaN/inf at step 0 of 1")
    assert "none was made" in line and "lower --lr" in line
    assert not (out / WEIGHTS_NAME).exists() and not (out / "checkpoint").exists()


def test_nan_weights_never_replace_the_last_good_checkpoint(tiny_sd_dir, tmp_path, uninterrupted, capsys):
    config = settings(tiny_sd_dir)
    out = tmp_path / "out"
    trainer(config).train(out, stop_after=2)
    good = {name: (out / "checkpoint" / name).read_bytes() for name in ("state.json", "state.safetensors")}
    capsys.readouterr()
    # a new run into the same folder at lr inf, checkpointing every step
    assert run(train_args(tiny_sd_dir, out, 3, "--lr", "inf", "--checkpoint-every", "1")) == 2
    line = last_line(capsys.readouterr().err)
    assert "the trained weights became NaN/inf at step 0 of 3" in line
    assert "nothing was saved over the last good checkpoint" in line
    assert f"it is {out / 'checkpoint'} (step 2)" in line and "lower --lr, then --resume" in line
    assert not (out / WEIGHTS_NAME).exists()
    assert {name: (out / "checkpoint" / name).read_bytes() for name in good} == good
    resumed = trainer(config)  # the good checkpoint still resumes, to the uninterrupted result
    resumed.train(out, resume=True)
    assert_same(resumed.trainable, uninterrupted)
    assert all(torch.isfinite(v).all() for v in load_tensors(out / WEIGHTS_NAME).values())


# ----------------------------------------------------------------- (d) Ctrl-C
@pytest.fixture
def sigint_raises_keyboard_interrupt():
    """Python's usual SIGINT handler, even where this test process inherited SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_at_the_step_boundary_with_a_checkpoint(tiny_sd_dir, tmp_path, uninterrupted,
                                                             sigint_raises_keyboard_interrupt):
    config = settings(tiny_sd_dir)
    out = tmp_path / "out"

    def ctrl_c_at_step_2(step, total, logs):
        if step == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=re.escape(f"interrupted at step 2 of 4; checkpoint saved in "
                                                            f"{out / 'checkpoint'}: resume with --resume")):
        trainer(config).train(out, callback=ctrl_c_at_step_2)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler before train is back
    assert step_of(out / "checkpoint") == 2 and not (out / WEIGHTS_NAME).exists()

    def ctrl_c_twice(step, total, logs):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # the second one does not wait for the step boundary

    with pytest.raises(KeyboardInterrupt):
        trainer(config).train(out, resume=True, callback=ctrl_c_twice)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert step_of(out / "checkpoint") == 2  # the checkpoint is untouched

    resumed = trainer(config)
    resumed.train(out, resume=True)
    assert_same(resumed.trainable, uninterrupted)


def test_sigint_to_erasure_train_exits_130_with_one_line_and_resumes_exactly(tiny_sd_dir, tmp_path, capsys):
    cut, full = tmp_path / "cut", tmp_path / "full"
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    # the same CPU threads as this process (the numbers of a step depend on them); output unbuffered
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(stdout, "w") as out_f, open(stderr, "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-m", "erasure", *train_args(tiny_sd_dir, cut, 100000,
                                                                              "--checkpoint-every", "1")],
                                stdout=out_f, stderr=err_f, env=env,
                                # Python's usual SIGINT handling, also where this process ignores SIGINT
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            while "checkpoint:" not in stdout.read_text() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    line = last_line(stderr.read_text())
    found = re.fullmatch(rf"erasure: error: interrupted at step (\d+) of 100000; checkpoint saved in "
                         rf"{re.escape(str(cut / 'checkpoint'))}: resume with --resume", line)
    assert found, line
    step = int(found.group(1))
    assert step >= 1 and step_of(cut / "checkpoint") == step and not (cut / WEIGHTS_NAME).exists()

    # --steps may change on resume: finish two steps later, as a run of that many steps does
    assert run(train_args(tiny_sd_dir, cut, step + 2, "--resume")) == 0
    assert run(train_args(tiny_sd_dir, full, step + 2)) == 0
    resumed, expected = load_tensors(cut / WEIGHTS_NAME), load_tensors(full / WEIGHTS_NAME)
    assert_same(resumed, expected)
    assert not (cut / "checkpoint").exists()


def test_sigint_outside_training_exits_130_in_one_line_and_writes_nothing(tiny_sd_dir, tmp_path):
    out, stderr = tmp_path / "images", tmp_path / "stderr"
    with open(stderr, "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-m", "erasure", "generate", "--model", str(tiny_sd_dir), "--prompt",
                                 "a circle", "--steps", "500", "--num-images", "64", "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=err_f, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.time() + 120
            while "generate" not in stderr.read_text() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # inside the sampling loop
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    assert last_line(stderr.read_text()) == ("erasure: interrupted (Ctrl-C); files already written are complete, "
                                             "none is half-written")
    assert not out.exists()
