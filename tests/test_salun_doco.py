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


def _moved_away(trainer):
    """Scale the trained cross-attention weights so that the UNet's forget-prompt prediction is
    clearly not the frozen model's anchor prediction (a tiny random UNet barely reads its prompt)."""
    with torch.no_grad():
        for p in trainer.trainable.values():
            p.mul_(6.0)
    return trainer


def _fixed_adversarial_batch(trainer):
    """One fixed (x_t, t, c_anchor, c_forget) batch, drawn as compute_loss draws it."""
    x0, ids = trainer.draw_batch(trainer.anchor_data, 4)
    x_t, t, _ = trainer.noised(x0)
    return x_t, t, trainer.c_anchor[ids], trainer.c_forget[ids]


def test_doco_discriminator_loss_falls_during_warmup(tiny_sd_dir, tmp_path):
    from erasure.trainers.doco import bce

    trainer = _moved_away(trainer_for(make_config("doco", tiny_sd_dir, steps=13, disc_warmup=12, disc_lr=2e-3)))
    x_t, t, c_a, c_f = _fixed_adversarial_batch(trainer)
    with torch.no_grad():
        real = trainer.predicted_x0(trainer.frozen_unet, x_t, t, c_a)
        fake = trainer.predicted_x0(trainer.unet, x_t, t, c_f)

    def disc_loss() -> float:
        trainer.discriminator.eval()
        with torch.no_grad():
            logits = trainer.discriminator(torch.cat([real, fake]))
        return float(bce(logits[:4], True) + bce(logits[4:], False))

    before = disc_loss()
    trainer.train(tmp_path / "out", stop_after=12)  # warm-up only: the discriminator learns, the UNet waits
    assert disc_loss() < before - 0.1


def test_doco_unet_adversarial_loss_falls_against_a_fixed_discriminator(tiny_sd_dir, tmp_path):
    from erasure.trainers.doco import bce

    trainer = _moved_away(trainer_for(make_config("doco", tiny_sd_dir, steps=27, disc_warmup=12, disc_lr=2e-3, lr=1e-2,
                                                  retain_weight=0.0)))
    trainer.train(tmp_path / "out", stop_after=12)  # the discriminator learns first (warm-up)
    for group in trainer.disc_optimizer.param_groups:  # then stays fixed: what falls now is the UNet's doing
        group["lr"] = 0.0
    x_t, t, _, c_f = _fixed_adversarial_batch(trainer)
    start = {k: p.detach().clone() for k, p in trainer.trainable.items()}
    trainer.train(tmp_path / "out")
    trained = {k: p.detach().clone() for k, p in trainer.trainable.items()}

    def adv_loss(weights) -> float:
        with torch.no_grad():
            for k, p in trainer.trainable.items():
                p.copy_(weights[k])
            trainer.discriminator.eval()
            return float(bce(trainer.discriminator(trainer.predicted_x0(trainer.unet, x_t, t, c_f)), True))

    assert adv_loss(trained) < adv_loss(start) - 0.05


def test_doco_guided_prediction_is_the_cfg_x0(tiny_sd_dir):
    from erasure.sampling import predicted_x0

    trainer = trainer_for(make_config("doco", tiny_sd_dir, adv_guidance=3.0))
    x_t, t, c_a, _ = _fixed_adversarial_batch(trainer)
    unet = trainer.frozen_unet
    with torch.no_grad():
        eps_c = unet(x_t, t, encoder_hidden_states=c_a).sample
        eps_u = unet(x_t, t, encoder_hidden_states=trainer.c_uncond.expand(len(x_t), -1, -1)).sample
        guided = trainer.predicted_x0(unet, x_t, t, c_a)
        trainer.config.adv_guidance = 0.0
        plain = trainer.predicted_x0(unet, x_t, t, c_a)
    ac = trainer.alphas_cumprod
    assert torch.allclose(guided, predicted_x0(x_t, eps_u + 3.0 * (eps_c - eps_u), ac, t), atol=1e-4)
    assert torch.allclose(plain, predicted_x0(x_t, eps_c, ac, t), atol=1e-4)
    assert not torch.allclose(guided, plain, atol=1e-3)
    with pytest.raises(UserError, match="--adv-guidance must be >= 0"):
        make_config("doco", tiny_sd_dir, adv_guidance=-1.0)
