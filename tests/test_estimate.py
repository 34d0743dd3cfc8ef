"""The fake-tensor memory estimator (erasure/estimate.py) on tiny models: the fake run allocates
exactly what the real run allocates, and the estimate moves the way memory does."""
from __future__ import annotations

import pytest
import torch

from erasure.estimate import LiveBytes, estimate_discrete_attack, estimate_training, pipeline_from_configs, run_steps

from tiny import build_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


ESD = {"method": "esd-u", "concept": "van gogh", "steps": 2, "checkpoint_every": 0, "dtype": "float32",
       "trajectory_batch": 2, "ddim_steps": 3}


def real_tracked_peak(settings: dict, folder, tmp_path) -> int:
    """The same two steps with real tensors, every tensor's storage counted by the same tracker."""
    from erasure.config import EraseConfig
    from erasure.registry import get_method

    cfg = EraseConfig.from_dict({**settings, "base_model": str(folder), "device": "cpu"})
    tracker = LiveBytes(fake_only=False)
    with tracker:
        pipe = pipeline_from_configs(folder, fake=False)
        trainer = get_method(cfg.method).trainer_cls(cfg, pipe=pipe, cache_dir=tmp_path)
        del pipe
        tracker.scan()
        setup_peak = tracker.peak
        peaks = run_steps(trainer, 2, tracker)
    return max(setup_peak, *peaks)


@pytest.mark.parametrize("method,extra", [("esd-u", {}), ("advunlearn", {"attack_steps": 2, "attack_warmup": 0,
                                                                        "retain_batch": 2, "ddim_steps": 2,
                                                                        "retain_trajectories": 2, "trajectory_batch": 1,
                                                                        "concept": "nudity"})])
def test_the_fake_run_allocates_what_the_real_run_allocates(tiny_dir, tmp_path, method, extra):
    settings = {**ESD, "method": method, **extra}
    estimate = estimate_training(settings, tiny_dir, plan_device="cpu")
    real = real_tracked_peak(settings, tiny_dir, tmp_path)
    assert estimate.peak > 0 and estimate.trained_params > 0
    assert abs(real - estimate.peak) <= 0.02 * real, (real, estimate.peak)


def test_the_estimate_grows_with_resolution_and_batch(tiny_dir):
    small = estimate_training(ESD, tiny_dir, sample_size=8, plan_device="cpu")
    large = estimate_training(ESD, tiny_dir, sample_size=32, plan_device="cpu")
    batched = estimate_training({**ESD, "batch_size": 4}, tiny_dir, sample_size=8, plan_device="cpu")
    assert large.peak > small.peak
    assert batched.peak > small.peak
    # weights, frozen copy and optimizer state do not depend on the resolution
    assert large.after_setup == small.after_setup


def test_the_plan_is_made_for_the_accelerator_asked_for(tiny_dir):
    """bf16 frozen weights halve the frozen copy: the estimate after setup drops."""
    fp32 = estimate_training(ESD, tiny_dir, plan_device="cuda")
    bf16 = estimate_training({**ESD, "dtype": "bfloat16"}, tiny_dir, plan_device="cuda")
    assert bf16.after_setup < fp32.after_setup


def test_gradient_checkpointing_lowers_the_estimated_peak(tiny_dir):
    off = estimate_training({**ESD, "gradient_checkpointing": "false", "batch_size": 4}, tiny_dir, sample_size=32,
                            plan_device="cpu")
    on = estimate_training({**ESD, "gradient_checkpointing": "true", "batch_size": 4}, tiny_dir, sample_size=32,
                           plan_device="cpu")
    assert on.peak < off.peak
    assert on.after_setup == off.after_setup


def test_the_attack_estimate_grows_with_its_batch(tiny_dir):
    one = estimate_discrete_attack(tiny_dir, attack_batch=1, dtype=torch.float32, gradient_checkpointing=False)
    three = estimate_discrete_attack(tiny_dir, attack_batch=3, dtype=torch.float32, gradient_checkpointing=False)
    assert three.peak > one.peak > one.after_setup > 0
    bf16 = estimate_discrete_attack(tiny_dir, attack_batch=1, dtype=torch.bfloat16, gradient_checkpointing=False)
    assert bf16.after_setup < one.after_setup


def test_a_sharded_estimate_keeps_one_process_share_of_the_optimizer_states(tiny_dir):
    est = estimate_training({**ESD, "method": "esd-x"}, tiny_dir, plan_device="cpu", shard_over=(1, 2, 4))
    assert est.optimizer_state > 0 and est.sharded_peaks[1] == est.peak
    assert est.peak > est.sharded_peaks[2] > est.sharded_peaks[4] >= est.setup_peak
    # at most the other processes' share is saved: no more than (1 - 1/N) of the states
    assert est.peak - est.sharded_peaks[2] <= est.optimizer_state / 2 + 1
    assert est.as_dict()["sharded_peak_gib"].keys() == {"1", "2", "4"}


def test_zero_shares_place_the_largest_first_on_the_least_loaded():
    from erasure.estimate import zero_shares
    assert zero_shares([(10, 80), (3, 24), (8, 64), (2, 16)], 2) == [80 + 16, 64 + 24]
    assert zero_shares([(5, 40)], 3) == [40, 0, 0]
