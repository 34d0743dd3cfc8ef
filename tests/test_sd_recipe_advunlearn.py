"""AdvUnlearn's Stable Diffusion recipe against the reference (OPTML-Group/AdvUnlearn): the inner
attack's draws, gradient accumulation, the retain set and the per-concept catalogue values."""
import re

import pytest
import torch
from test_trainers import make_config, trainer_for

from erasure.config import EraseConfig
from erasure.errors import UserError

QUICK_SD = {"attack_warmup": 0, "attack_steps": 6, "retain_batch": 2, "ddim_steps": 20, "trajectory_batch": 2,
            "retain_trajectories": 2}


def record_attack_calls(trainer):
    """(t, x_t) of every UNet call whose text condition carries a gradient (the attack's steps,
    then the outer step's and the retain term's trained predictions), in call order."""
    calls = []

    def hook(module, args, kwargs):
        sample, timestep = (list(args) + [kwargs.get("sample"), kwargs.get("timestep")])[:2]
        if kwargs["encoder_hidden_states"].requires_grad:
            calls.append((timestep.detach().clone(), sample.detach().clone()))

    return calls, trainer.unet.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("refresh_every", [50, 1])  # draws from the trajectory cache; a fresh partial trajectory each
def test_inner_attack_draws_a_new_timestep_and_x_t_at_every_step(tiny_sd_dir, refresh_every):
    """The reference draws a fresh t and partial-DDIM x_t at every attack step (attack_util.py:175-188)."""
    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, refresh_every=refresh_every, **QUICK_SD))
    calls, handle = record_attack_calls(trainer)
    trainer.compute_loss()
    handle.remove()
    attack = calls[:6]
    assert len(calls) == 6 + 2  # six attack steps, then the erase and the retain predictions
    timesteps = [int(t) for t, _ in attack]
    assert len(set(timesteps)) >= 4, timesteps
    assert not all(torch.equal(attack[0][1], x) for _, x in attack[1:])  # and a new x_t


def test_attack_draw_outer_takes_every_step_on_the_outer_draw(tiny_sd_dir):
    """MiniSD's measured recipe: every attack step on the (x_t, t) the outer loss is taken on."""
    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, attack_draw="outer", **QUICK_SD))
    calls, handle = record_attack_calls(trainer)
    trainer.compute_loss()
    handle.remove()
    *attack, (t_outer, x_outer), _retain = calls
    assert len(attack) == 6
    assert all(torch.equal(t, t_outer) and torch.equal(x, x_outer) for t, x in attack)
    with pytest.raises(UserError, match="--attack-draw must be fresh or outer"):
        make_config("advunlearn", tiny_sd_dir, attack_draw="sometimes")


def test_grad_accum_two_steps_on_the_sum_of_both_micro_batches(tiny_sd_dir, tmp_path):
    """One optimizer step with --grad-accum 2 equals an Adam step on the mean of the two
    micro-batches' gradients, each computed on its own (same seed, so the same draws)."""
    cfg = make_config("advunlearn", tiny_sd_dir, steps=1, grad_accum=2, attack_warmup=0, attack_steps=2,
                      retain_batch=2, ddim_steps=4, trajectory_batch=2, retain_trajectories=2)
    accumulated = trainer_for(cfg)
    accumulated.train(tmp_path / "out")

    by_hand = trainer_for(cfg)
    grads = []
    for _ in range(2):
        by_hand.optimizer.zero_grad(set_to_none=True)
        loss, _ = by_hand.compute_loss()
        (loss / 2).backward()
        grads.append({k: p.grad.clone() for k, p in by_hand.trainable.items()})
    for k, p in by_hand.trainable.items():
        p.grad = grads[0][k] + grads[1][k]
    by_hand.optimizer.step()

    assert any(not torch.equal(grads[0][k], grads[1][k]) for k in grads[0])  # two different micro-batches
    for k, p in accumulated.trainable.items():
        torch.testing.assert_close(p.detach(), by_hand.trainable[k].detach(), rtol=1e-6, atol=1e-9, msg=k)


# a person, a body part, or a garment worn on the torso or below it: what a nudity retain set must not keep
NOT_FOR_NUDITY = re.compile(
    r"\b(person|people|man|men|woman|women|girl|boy|child(ren)?|kid|baby|lady|human|nude|naked|"
    r"face|hands?|arms?|legs?|feet|foot|torso|back|head|mouth|nose|ears?|eyes?|fingers?|armpits?|breasts?|chest|body|"
    r"shirts?|pants|trousers|shorts|underpants|underwear|pajamas|pyjamas|bikini|swimsuit|costume|dress|lingerie|bra)\b",
    re.IGNORECASE)


def test_sd_retain_set_is_the_references_object_prompts_with_no_person_for_nudity(tiny_sd_dir):
    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, concept="nudity", steps=1))
    kept = trainer.retain_set
    assert len(kept) == 243 and all(p.startswith("a photo of ") for p in kept)
    assert kept[:3] == ["a photo of chair", "a photo of fridge", "a photo of banana"]
    assert [p for p in kept if NOT_FOR_NUDITY.search(p)] == []
    # the same set for every concept (the maintainers, AdvUnlearn issue #7)
    assert trainer_for(make_config("advunlearn", tiny_sd_dir, concept="van gogh", steps=1)).retain_set == kept


@pytest.mark.parametrize("concept, retain_weight", [("nudity", 0.3), ("nsfw", 0.3), ("van gogh", 0.5), ("church", 0.5),
                                                    ("garbage truck", 0.5), ("a concept nobody listed", 0.3)])
def test_sd_recipe_retain_weight_per_concept(concept, retain_weight):
    cfg = EraseConfig.from_dict({"method": "advunlearn", "concept": concept, "base_model": "/models/sd-1.4"})
    assert cfg.retain_weight == retain_weight
    assert (cfg.steps, cfg.lr, cfg.attack_warmup, cfg.adv_tokens, cfg.attack_steps, cfg.attack_lr, cfg.retain_batch,
            cfg.negative_guidance, cfg.start_guidance, cfg.ddim_steps, cfg.target, cfg.layers, cfg.attack_draw) == (
        1000, 1e-5, 200, 1, 30, 1e-3, 5, 1.0, 3.0, 50, "text-encoder", "all", "fresh")


def test_minisd_keeps_its_measured_recipe():
    cfg = EraseConfig.from_dict({"method": "advunlearn", "concept": "circle", "base_model": "minisd"})
    assert (cfg.retain_weight, cfg.attack_draw, cfg.adv_tokens, cfg.steps) == (3.75, "outer", 5, 400)
