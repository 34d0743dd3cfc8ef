"""Memory levers (erasure/memory.py): the plan's auto rules by model size and device, gradient
checkpointing that changes no number, the optimizer choices (8-bit Adam trains and resumes
exactly), SalUn's saliency ranking on either device, and --grad-accum for every method."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_trainers import make_config, snapshot, trainer_for

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.memory import BIG_UNET_PARAMS, MemoryPlan, is_big, memory_plan

SD14_UNET = 859_520_964


def config(method="esd-x", **kw):
    return EraseConfig.from_dict({"method": method, "concept": "circle", **kw})


# ---------------------------------------------------------------- the plan
@pytest.mark.parametrize("params, device, plan", [
    (2_000_000, "cpu", MemoryPlan(False, "adam", "device")),
    (2_000_000, "cuda", MemoryPlan(False, "adam", "device")),     # MiniSD on a GPU: as it always ran
    (SD14_UNET, "cpu", MemoryPlan(True, "adam", "device")),
    (SD14_UNET, "cuda", MemoryPlan(True, "adam", "cpu")),
    (BIG_UNET_PARAMS, "cuda", MemoryPlan(False, "adam", "device")),  # "over" 300M
])
def test_auto_levers_follow_the_unets_size_and_the_device(params, device, plan):
    assert memory_plan(config("salun"), device, params) == plan


def test_explicit_levers_are_kept_whatever_the_size():
    cfg = config("salun", gradient_checkpointing="false", optimizer="adam8bit", saliency_device="device")
    assert memory_plan(cfg, "cuda", SD14_UNET) == MemoryPlan(False, "adam8bit", "device")
    cfg = config("salun", gradient_checkpointing="on", optimizer="adam-offload", saliency_device="cpu")
    assert memory_plan(cfg, "cpu", 1000) == MemoryPlan(True, "adam-offload", "cpu")


def test_is_big_counts_the_unets_parameters(tiny_sd_dir):
    with torch.device("meta"):
        big = torch.nn.Linear(20_000, 20_000)  # 400M parameters, no memory
    assert is_big(big)
    assert not is_big(trainer_for(make_config("esd-x", tiny_sd_dir)).unet)


def test_the_trainer_plans_with_the_module_level_memory_plan(tiny_sd_dir, monkeypatch):
    """The seam a memory estimate uses: plan for CUDA while running on the CPU."""
    from erasure.trainers import base
    seen = []
    monkeypatch.setattr(base, "memory_plan", lambda cfg, device_type, n: seen.append((device_type, n)) or
                        memory_plan(cfg, "cuda", SD14_UNET))
    trainer = trainer_for(make_config("esd-x", tiny_sd_dir))
    assert seen == [("cpu", sum(p.numel() for p in trainer.unet.parameters()))]
    assert trainer.plan.gradient_checkpointing and trainer.unet.is_gradient_checkpointing


@pytest.mark.parametrize("settings, message", [
    ({"gradient_checkpointing": "sometimes"}, "--gradient-checkpointing takes auto, true or false (got 'sometimes')"),
    ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; choose auto, adam, adam8bit, adam-offload"),
    ({"save_dtype": "float64"}, "unknown --save-dtype 'float64'; choose base, float32, float16, bfloat16"),
    ({"method": "salun", "saliency_device": "gpu"}, "--saliency-device must be auto, cpu or device (got 'gpu')"),
])
def test_bad_lever_settings_are_one_line_errors(settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config(**settings)


@pytest.mark.parametrize("word, value", [(True, "true"), ("Yes", "true"), ("0", "false"), (False, "false"),
                                         ("AUTO", "auto")])
def test_gradient_checkpointing_reads_bools_and_cli_words(word, value):
    assert config(gradient_checkpointing=word).gradient_checkpointing == value
    assert config(method="sfd", gradient_checkpointing=word).gradient_checkpointing == value  # SFD's old bool


def test_save_dtype_defaults_to_the_bases():
    assert config().save_dtype == "base"
    assert config(save_dtype="bfloat16").save_dtype == "bfloat16"


def test_offloading_adam_on_a_cpu_is_refused_before_the_model_loads(tiny_sd_dir):
    cfg = make_config("esd-x", tiny_sd_dir, optimizer="adam-offload", device="cpu")
    cfg.base_model = str(tiny_sd_dir / "no-such-model")
    with pytest.raises(UserError, match=r"^--optimizer adam-offload .* CUDA .*use --optimizer adam or adam8bit$") as e:
        trainer_for(cfg)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- gradient checkpointing
def counting(module):
    """Calls of `module` (a leaf: torch runs a checkpointed block's own hooks once, its children's
    again in the recomputation)."""
    calls = []
    return calls, module.register_forward_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize("method, extra", [
    ("esd-u", {}),
    ("advunlearn", {"attack_warmup": 0, "attack_steps": 2, "retain_batch": 2, "ddim_steps": 4, "trajectory_batch": 2,
                    "retain_trajectories": 2}),
])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(method, extra, tiny_sd_dir):
    def run(checkpointing):
        trainer = trainer_for(make_config(method, tiny_sd_dir, gradient_checkpointing=checkpointing, **extra))
        unet_calls, h1 = counting(trainer.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k)
        text_calls, h2 = counting(next(m for m in trainer.text_encoder.modules() if type(m).__name__ == "CLIPEncoderLayer").mlp.fc1)
        result = trainer.compute_loss()
        loss = result[0] if isinstance(result, tuple) else result
        before = len(unet_calls), len(text_calls)
        loss.backward()
        h1.remove(), h2.remove()
        recomputed = len(unet_calls) - before[0], len(text_calls) - before[1]
        return loss.item(), {k: p.grad.clone() for k, p in trainer.trainable.items()}, recomputed

    loss, grads, recomputed = run("false")
    loss_ckpt, grads_ckpt, recomputed_ckpt = run("true")
    assert recomputed == (0, 0)
    assert recomputed_ckpt[0] > 0  # the UNet's blocks ran again in the backward pass
    if method == "advunlearn":  # the trained text encoder's layers too
        assert recomputed_ckpt[1] > 0
    assert loss_ckpt == pytest.approx(loss, rel=1e-5, abs=1e-7)
    for k in grads:
        torch.testing.assert_close(grads_ckpt[k], grads[k], rtol=1e-5, atol=1e-7, msg=k)


def test_small_models_keep_checkpointing_off_by_default(tiny_sd_dir):
    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir))
    assert not trainer.unet.is_gradient_checkpointing
    assert not any(getattr(m, "gradient_checkpointing", False) for m in trainer.text_encoder.modules())


def test_a_resumed_run_may_switch_gradient_checkpointing(tiny_sd_dir, tmp_path):
    """It changes no number; a checkpoint made before a setting existed reads it as its default."""
    import json
    cfg = make_config("esd-x", tiny_sd_dir, steps=2)
    full = trainer_for(cfg)
    full.train(tmp_path / "full")
    trainer_for(cfg).train(tmp_path / "cut", stop_after=1)
    state = tmp_path / "cut" / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    del meta["config"]["optimizer"]  # as an older checkpoint
    state.write_text(json.dumps(meta))
    resumed = trainer_for(make_config("esd-x", tiny_sd_dir, steps=2, gradient_checkpointing="true"))
    resumed.train(tmp_path / "cut", resume=True)
    assert all(torch.allclose(p, resumed.trainable[k], rtol=1e-5, atol=1e-8) for k, p in full.trainable.items())
    with pytest.raises(UserError, match=r"different settings \(optimizer\)"):
        trainer_for(cfg).train(tmp_path / "cut", stop_after=1)
        trainer_for(make_config("esd-x", tiny_sd_dir, steps=2, optimizer="adam8bit")).train(tmp_path / "cut",
                                                                                           resume=True)


# ---------------------------------------------------------------- the optimizers
def states(optimizer):
    return {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in optimizer.state_dict()["state"].items()}


def test_adam8bit_trains_with_8_bit_states_and_resumes_exactly(tiny_sd_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = make_config("esd-all", tiny_sd_dir, optimizer="adam8bit", steps=4)
    full = trainer_for(cfg)
    full.train(tmp_path / "full")
    assert type(full.optimizer).__module__ == "erasure.memory"
    dtypes = {v.dtype for s in full.optimizer.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v)}
    assert torch.uint8 in dtypes  # the weights of >= 4096 elements keep 8-bit moments
    plain = trainer_for(make_config("esd-all", tiny_sd_dir, steps=4))
    plain.train(tmp_path / "plain")
    assert any(not torch.equal(full.trainable[k], plain.trainable[k]) for k in full.trainable)  # not torch's Adam

    cut = trainer_for(cfg)
    cut.train(tmp_path / "cut", stop_after=2)
    resumed = trainer_for(cfg)
    resumed.train(tmp_path / "cut", resume=True)
    for k, p in full.trainable.items():
        assert torch.equal(p, resumed.trainable[k]), k
    a, b = states(full.optimizer), states(resumed.optimizer)
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys()
        assert all(torch.equal(a[i][k], b[i][k]) if torch.is_tensor(a[i][k]) else a[i][k] == b[i][k] for k in a[i])


def test_adam8bit_for_sfds_two_networks_resumes_exactly(tiny_sd_dir, tmp_path):
    """SFD's fake net and its optimizer go through the method's extra state; betas (0, 0.999)."""
    pytest.importorskip("bitsandbytes")
    cfg = make_config("sfd", tiny_sd_dir, optimizer="adam8bit", steps=3)
    full = trainer_for(cfg)
    assert full.optimizer.param_groups[0]["betas"] == (0.0, 0.999)
    assert type(full.fake_optimizer).__module__ == "erasure.memory"
    full.train(tmp_path / "full")
    trainer_for(cfg).train(tmp_path / "cut", stop_after=1)
    resumed = trainer_for(cfg)
    resumed.train(tmp_path / "cut", resume=True)
    for k, p in full.trainable.items():
        assert torch.equal(p, resumed.trainable[k]), k
    for (n, p), q in zip(full.fake.named_parameters(), resumed.fake.parameters()):
        assert torch.equal(p, q), n


def test_every_optimizer_a_method_makes_follows_the_setting(tiny_sd_dir):
    pytest.importorskip("bitsandbytes")
    doco = trainer_for(make_config("doco", tiny_sd_dir, optimizer="adam8bit"))
    for optimizer in (doco.optimizer, doco.disc_optimizer):
        assert type(optimizer).__module__ == "erasure.memory"
    assert doco.optimizer.param_groups[0]["weight_decay"] == 1e-2  # DoCo's AdamW
    plain = trainer_for(make_config("doco", tiny_sd_dir))
    assert isinstance(plain.optimizer, torch.optim.AdamW) and isinstance(plain.disc_optimizer, torch.optim.Adam)


# ---------------------------------------------------------------- SalUn's saliency ranking
SALUN = {"n_forget": 4, "n_retain": 4, "batch_size": 2, "data_steps": 2, "mask_ratio": 0.3}


def reference_mask(trainer):
    """The mask as SalUn's generate_mask.py computes it: the per-batch gradients summed in a dict
    of their own, every |grad| ranked at once (topk), the top mask_ratio kept."""
    cfg = trainer.config
    params = list(trainer.trainable.values())
    grads = {k: torch.zeros_like(p) for k, p in trainer.trainable.items()}
    data = trainer.forget_data
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    for start in range(0, len(data), cfg.batch_size):
        x0 = data.latents[start:start + cfg.batch_size]
        c_f = trainer.c_forget[data.prompt_ids[start:start + cfg.batch_size]]
        x_t, t, noise = trainer.noised(x0, generator)
        eps_f = trainer.unet(x_t, t, encoder_hidden_states=c_f).sample
        eps_0 = trainer.unet(x_t, t, encoder_hidden_states=trainer.c_empty.expand(len(x0), -1, -1)).sample
        loss = -F.mse_loss((1 + cfg.mask_guidance) * eps_f - cfg.mask_guidance * eps_0, noise)
        for k, g in zip(grads, torch.autograd.grad(loss, params)):
            grads[k] += g
    scores = torch.cat([g.abs().flatten() for g in grads.values()])
    threshold = scores.topk(math.ceil(cfg.mask_ratio * len(scores))).values[-1]
    return {k: g.abs() >= threshold for k, g in grads.items()}


def test_the_saliency_mask_is_the_same_ranked_on_the_cpu_or_the_device(tiny_sd_dir, tmp_path):
    masks = []
    for where in ("cpu", "device"):
        cfg = make_config("salun", tiny_sd_dir, saliency_device=where, **SALUN)
        trainer = get_salun(cfg, tmp_path / where)
        assert trainer.plan.saliency_device == where
        masks.append(trainer.mask)
        assert all(p.grad is None for p in trainer.trainable.values())  # the pass's gradients are freed
    expected = reference_mask(trainer)
    for k in expected:
        assert torch.equal(masks[0][k], masks[1][k]), k
        assert torch.equal(masks[0][k], expected[k]), k
    kept = sum(m.sum().item() for m in masks[0].values()) / sum(m.numel() for m in masks[0].values())
    assert kept == pytest.approx(0.3, abs=0.01)


def get_salun(cfg, cache_dir):
    from erasure.trainers.salun import SalUnTrainer
    return SalUnTrainer(cfg, cache_dir=cache_dir)  # its own cache: the mask is computed, never read


# ---------------------------------------------------------------- --grad-accum
def by_hand_step(trainer, micro_batches=2):
    """An optimizer step on the mean of `micro_batches` compute_loss gradients, each computed on
    its own; returns them."""
    grads = []
    for _ in range(micro_batches):
        trainer.optimizer.zero_grad(set_to_none=True)
        result = trainer.compute_loss()
        loss = result[0] if isinstance(result, tuple) else result
        (loss / micro_batches).backward()
        grads.append({k: p.grad.clone() for k, p in trainer.trainable.items() if p.grad is not None})
    for k, p in trainer.trainable.items():
        p.grad = sum(g[k] for g in grads) if k in grads[0] else None
    trainer.before_optimizer_step()
    trainer.optimizer.step()
    return grads


@pytest.mark.parametrize("method, extra", [("esd-u", {}), ("salun", SALUN)])
def test_grad_accum_steps_once_on_the_mean_of_both_micro_batches(method, extra, tiny_sd_dir, tmp_path):
    cfg = make_config(method, tiny_sd_dir, steps=1, grad_accum=2, **extra)
    base = snapshot(trainer_for(cfg).pipe)
    accumulated = trainer_for(cfg)
    accumulated.train(tmp_path / "out")
    by_hand = trainer_for(cfg)
    grads = by_hand_step(by_hand)
    assert any(not torch.equal(grads[0][k], grads[1][k]) for k in grads[0])  # two different micro-batches
    for k, p in accumulated.trainable.items():
        torch.testing.assert_close(p.detach(), by_hand.trainable[k].detach(), rtol=1e-6, atol=1e-9, msg=k)
    assert all(int(s["step"]) == 1 for s in accumulated.optimizer.state_dict()["state"].values())  # one step
    after = snapshot(accumulated.pipe)
    assert all(torch.equal(base[k], after[k]) for k in base if k not in accumulated.trainable)  # nothing else moved
    if method == "salun":  # the mask still holds: masked weights never move
        for k, m in accumulated.mask.items():
            assert torch.equal(after[k][~m], base[k][~m]), k


def test_doco_grad_accum_projects_the_mean_gradients_and_steps_each_network_once(tiny_sd_dir, tmp_path):
    from erasure.trainers.doco import bce, concept_preserving_gradient
    cfg = make_config("doco", tiny_sd_dir, steps=1, disc_warmup=0, grad_accum=2)
    accumulated = trainer_for(cfg)
    accumulated.train(tmp_path / "out")

    t = trainer_for(cfg)  # DoCo's step by hand: the discriminator's gradients summed, one step at the last
    params = list(t.trainable.values())
    adv, ret, disc_losses = [], [], []
    for i in range(2):
        x0, ids = t.draw_batch(t.anchor_data, cfg.batch_size)
        c_a, c_f = t.c_anchor[ids], t.forget_conditions(ids)
        x_t, tt, _ = t.noised(x0)
        with torch.no_grad():
            real = t.predicted_x0(t.frozen_unet, x_t, tt, c_a)
        fake = t.predicted_x0(t.unet, x_t, tt, c_f)
        t.discriminator.train()
        logits_real, logits_fake = t.discriminator(torch.cat([real, fake.detach()])).chunk(2)
        disc_loss = bce(logits_real, True) + bce(logits_fake, False)
        (disc_loss / 2).backward()
        disc_losses.append(disc_loss.item())
        if i == 1:
            t.disc_optimizer.step()
        t.discriminator.eval()
        adv_loss = bce(t.discriminator(fake), True)
        retain_loss = t.denoising_loss(t.anchor_data, t.c_anchor, cfg.batch_size)
        adv.append(torch.autograd.grad(adv_loss, params))
        ret.append(torch.autograd.grad(retain_loss, params))
    g_adv = [(a + b) / 2 for a, b in zip(*adv)]
    g_ret = [(a + b) / 2 for a, b in zip(*ret)]
    for p, g in zip(params, concept_preserving_gradient(g_adv, g_ret, cfg.projection, cfg.retain_weight)):
        p.grad = g
    t.optimizer.step()

    assert disc_losses[0] != disc_losses[1]
    for k, p in accumulated.trainable.items():
        torch.testing.assert_close(p.detach(), t.trainable[k].detach(), rtol=1e-5, atol=1e-8, msg=k)
    for (n, p), q in zip(accumulated.discriminator.named_parameters(), t.discriminator.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-8, msg=n)
    for optimizer in (accumulated.optimizer, accumulated.disc_optimizer):
        assert all(int(s["step"]) == 1 for s in optimizer.state_dict()["state"].values())


def test_grad_accum_one_is_the_step_it_always_was(tiny_sd_dir, tmp_path):
    """--grad-accum 1 (the default) and a step taken straight from compute_loss agree exactly."""
    cfg = make_config("esd-x", tiny_sd_dir, steps=1)
    trained = trainer_for(cfg)
    trained.train(tmp_path / "out")
    by_hand = trainer_for(cfg)
    by_hand_step(by_hand, micro_batches=1)
    assert all(torch.equal(p, by_hand.trainable[k]) for k, p in trained.trainable.items())
