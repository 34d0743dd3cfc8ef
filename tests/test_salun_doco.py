"""SalUn's mask and DoCo's projection and warm-up, on the tiny random SD."""
import pytest
import torch

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.registry import get_method
from erasure.trainers.doco import project_conflict
from erasure.trainers.salun import MASK_FILE

from test_trainers import make_config, trainer_for


def test_saliency_mask_keeps_the_requested_fraction_and_masked_weights_never_move(tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config("salun", tiny_sd_dir, mask_ratio=0.3, steps=4, lr=1e-2))
    total = sum(m.numel() for m in trainer.mask.values())
    kept = sum(int(m.sum()) for m in trainer.mask.values())
    assert 0.3 <= kept / total < 0.31  # ties at the threshold may add a few
    before = {k: p.detach().clone() for k, p in trainer.trainable.items()}
    trainer.train(tmp_path / "out")
    frozen_moved = sum(int((before[k] != p.detach())[~trainer.mask[k]].sum()) for k, p in trainer.trainable.items())
    salient_moved = sum(int((before[k] != p.detach())[trainer.mask[k]].sum()) for k, p in trainer.trainable.items())
    assert frozen_moved == 0
    assert salient_moved > 0.5 * kept
    assert (tmp_path / "out" / MASK_FILE).exists()


def test_saliency_mask_is_reused_from_a_file(tiny_sd_dir, tmp_path):
    first = trainer_for(make_config("salun", tiny_sd_dir, mask_ratio=0.3))
    first.train(tmp_path / "a")
    second = trainer_for(make_config("salun", tiny_sd_dir, mask_ratio=0.9, mask=str(tmp_path / "a" / MASK_FILE)))
    assert all(torch.equal(first.mask[k], second.mask[k]) for k in first.mask)  # the file's mask, not a 0.9 one


def test_self_generated_data_is_cached_and_reused(tiny_sd_dir):
    trainer = trainer_for(make_config("salun", tiny_sd_dir))
    again = trainer.self_data(trainer.forget_data.prompts, len(trainer.forget_data))
    assert again.path == trainer.forget_data.path and torch.equal(again.latents, trainer.forget_data.latents)
    stamp = again.path.stat().st_mtime_ns
    trainer_for(make_config("salun", tiny_sd_dir))  # a second run: nothing regenerated
    assert again.path.stat().st_mtime_ns == stamp
    assert again.path.with_suffix(".png").exists()  # a preview a person can look at


def test_projection_removes_exactly_the_conflicting_component():
    g_ret = torch.tensor([1.0, 0.0, 0.0])
    g_adv = torch.tensor([-2.0, 1.0, 0.5])
    full = project_conflict(g_adv, g_ret, "full")
    assert torch.allclose(full, torch.tensor([0.0, 1.0, 0.5]))
    assert abs(float(full @ g_ret)) < 1e-6
    ref = project_conflict(g_adv, g_ret, "reference")  # subtracts cos x unit vector: conflict remains here
    assert float(ref @ g_ret) < 0
    agree = torch.tensor([1.0, 2.0, 0.0])
    assert torch.equal(project_conflict(agree, g_ret, "full"), agree)


def test_doco_warmup_trains_only_the_discriminator(tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config("doco", tiny_sd_dir, steps=3, disc_warmup=2))
    unet_before = {k: p.detach().clone() for k, p in trainer.trainable.items()}
    disc_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.train(tmp_path / "out", stop_after=2)
    assert all(torch.equal(unet_before[k], p) for k, p in trainer.trainable.items())
    assert any(not torch.equal(disc_before[k], v) for k, v in trainer.discriminator.state_dict().items())
    trainer.train(tmp_path / "out")  # step 3 is past the warm-up: the UNet moves
    assert any(not torch.equal(unet_before[k], p) for k, p in trainer.trainable.items())


@pytest.mark.parametrize("method", ["salun", "doco"])
def test_a_concept_without_default_anchor_asks_for_one(method, tiny_sd_dir):
    with pytest.raises(UserError, match="no default anchor for 'circle'; say what it should become"):
        trainer_for(make_config(method, tiny_sd_dir, anchor=""))


@pytest.mark.parametrize("method", ["salun", "doco"])
def test_an_anchor_equal_to_the_concept_is_refused(method, tiny_sd_dir):
    with pytest.raises(UserError, match="--anchor: the anchor .* is the concept itself"):
        trainer_for(make_config(method, tiny_sd_dir, anchor=" Circle "))


def test_nudity_gets_salun_paper_nudity_defaults():
    config = EraseConfig.from_dict({"method": "salun", "concept": "nudity", "base_model": "/some/sd"})
    assert (config.alpha, config.steps) == (0.1, 100)
    assert get_method("salun").config_cls(concept="a dog").alpha == 0.5
    with pytest.raises(UserError, match="--projection must be full, reference or none"):
        EraseConfig.from_dict({"method": "doco", "concept": "nudity", "base_model": "/x", "projection": "half"})
