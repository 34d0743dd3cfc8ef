"""SFD's Stable Diffusion recipe, the reference's (tqch/score-forgetting-distillation; docs/sfd.md):
the starting generator, the nudity recipe (subjects with NSFW keywords, the NSFW negative prompt
as the forget terms' unconditional branch), the reference's optimizer, gradient clipping, and
checkpoints that resume exactly and say their size."""
import copy
import re

import pytest
import torch

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.pipelines import ErasedPipeline
from erasure.prompt_files import SHIPPED_PROMPTS
from erasure.trainers.sfd import AdamWithoutFirstMoment, SFDTrainer

QUICK = {"method": "sfd", "steps": 2, "batch_size": 2, "lr": 1e-3, "fake_lr": 1e-3, "checkpoint_every": 0}


def sfd_config(base, **kw):
    return EraseConfig.from_dict({**QUICK, "concept": "circle", "anchor": "a square", "base_model": str(base), **kw})


def weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def lines(name):
    return (SHIPPED_PROMPTS / name).read_text().splitlines()


@pytest.fixture(scope="module")
def generator_dir(tiny_sd_dir, tmp_path_factory):
    """A one-step generator for the tiny base: a UNet of its architecture with other weights,
    saved as diffusers saves one (config.json + safetensors)."""
    from diffusers import UNet2DConditionModel

    base = ErasedPipeline.from_pretrained(tiny_sd_dir).unet
    torch.manual_seed(123)
    unet = UNet2DConditionModel.from_config(base.config)
    out = tmp_path_factory.mktemp("generator") / "unet"
    unet.save_pretrained(out, safe_serialization=True)
    return out


# ---------------------------------------------------------------- the starting generator
def test_a_stable_diffusion_run_without_a_generator_stops_naming_the_setting(tiny_sd_dir):
    config = sfd_config(tiny_sd_dir)
    assert config.generator == ""  # a config without one is still a config (erasure ls, --help)
    with pytest.raises(UserError, match="^--generator: .*one-step generator distilled .*--generator teacher") as e:
        SFDTrainer(config)
    assert "\n" not in str(e.value)
    config.base_model = str(tiny_sd_dir / "no-such-model")  # refused before the base model loads
    with pytest.raises(UserError, match="^--generator"):
        SFDTrainer(config)


def test_minisd_keeps_starting_from_the_teacher(tiny_mini_dir):
    config = sfd_config(tiny_mini_dir)
    assert config.generator == "teacher"
    trainer = SFDTrainer(config)
    assert same(weights(trainer.unet), weights(trainer.teacher))


def test_the_generator_starts_from_the_unet_folder_and_the_other_nets_from_the_base(tiny_sd_dir, generator_dir):
    from diffusers import UNet2DConditionModel

    saved = weights(UNet2DConditionModel.from_pretrained(generator_dir, use_safetensors=True))
    base = weights(ErasedPipeline.from_pretrained(tiny_sd_dir).unet)
    assert not same(saved, base)
    for folder in (generator_dir, generator_dir.parent):  # the UNet folder, or a folder holding it in unet/
        trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator=str(folder), ema=0.9))
        assert same(weights(trainer.unet), saved)
        assert same(weights(trainer.teacher), base) and same(weights(trainer.fake), base)
        assert all(torch.equal(trainer.ema_weights[f"unet.{n}"], saved[n]) for n in saved)  # the average starts there


def test_a_generator_that_is_not_a_safetensors_unet_of_this_base_is_a_one_line_error(tiny_sd_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    base = ErasedPipeline.from_pretrained(tiny_sd_dir).unet
    other = UNet2DConditionModel.from_config({**base.config, "cross_attention_dim": 16})
    other.save_pretrained(tmp_path / "other", safe_serialization=True)
    UNet2DConditionModel.from_config(base.config).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    cases = [(tmp_path / "missing", "no diffusers UNet folder"),
             (tmp_path / "other", r"not a UNet of this base's architecture \(cross_attention_dim 16 \(base: 32\)\)"),
             (tmp_path / "pickled", "holds no loadable safetensors UNet .*erasure reads safetensors only")]
    for folder, message in cases:
        with pytest.raises(UserError, match=f"^--generator: .*{message}") as e:
            SFDTrainer(sfd_config(tiny_sd_dir, generator=str(folder)))
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------- the nudity recipe
@pytest.mark.parametrize("spelling", ["nudity", "nude", "NSFW"])
def test_nudity_trains_the_references_subjects_with_nsfw_keywords_overridden_by_the_subject(tiny_sd_dir, spelling):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, concept=spelling, anchor="", generator="teacher"))
    subjects, keywords = lines("sfd_nudity_subjects.txt"), lines("sfd_nsfw_keywords.txt")
    assert (len(subjects), len(keywords)) == (12, 27)
    expected = {(f"{k} {s}", s) for s in subjects for k in keywords} | {(f"{s}, {k}", s) for s in subjects for k in keywords}
    assert len(trainer.forget) == len(expected) == 648
    assert set(zip(trainer.forget, trainer.override)) == expected


def test_keywords_keep_the_override_of_a_prompt_that_names_the_concept(tiny_sd_dir, tmp_path):
    (tmp_path / "kw.txt").write_text("smiling\n")
    (tmp_path / "p.txt").write_text("a photo of Brad Pitt\na man on a beach\n")
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, concept="Brad Pitt", anchor="a middle aged man", generator="teacher",
                                    concept_prompts=str(tmp_path / "p.txt"), forget_keywords=str(tmp_path / "kw.txt")))
    assert list(zip(trainer.forget, trainer.override)) == [
        ("smiling a photo of Brad Pitt", "a photo of a middle aged man"),
        ("a photo of Brad Pitt, smiling", "a photo of a middle aged man"),
        ("smiling a man on a beach", "a man on a beach"), ("a man on a beach, smiling", "a man on a beach")]


def unconditional_branches(trainer):
    """Run one optimizer step's losses; per guided call of the teacher and the fake net, in
    order: (net, the unconditional rows, the conditional rows) of encoder_hidden_states."""
    calls = []

    def recorder(name):
        def hook(module, args, kwargs):
            states = kwargs["encoder_hidden_states"]
            half = len(states) // 2
            calls.append((name, states[:half].detach().clone(), states[half:].detach().clone()))
        return hook

    handles = [trainer.teacher.register_forward_pre_hook(recorder("teacher"), with_kwargs=True),
               trainer.fake.register_forward_pre_hook(recorder("fake"), with_kwargs=True)]
    try:
        trainer.compute_loss()
    finally:
        for h in handles:
            h.remove()
    return calls


def test_the_nudity_recipe_guides_every_forget_term_against_the_nsfw_negative_prompt(tiny_sd_dir):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, concept="nudity", anchor="", generator="teacher", fake_dropout=0.0))
    negative = trainer.config.negative_prompt
    assert negative.startswith("nudity, sexual, explicit, pornography") and negative.endswith("private setting")
    c_negative, c_empty = trainer.embed([negative])[0], trainer.embed([""])[0]
    calls = unconditional_branches(trainer)
    # the fake net's training on remain then forget samples; G's remain term (teacher, fake), then its forget term
    assert [name for name, _, _ in calls] == ["fake", "fake", "teacher", "fake", "teacher", "fake"]
    forget_terms, remain_terms = [calls[i] for i in (1, 4, 5)], [calls[i] for i in (0, 2, 3)]
    for _, uncond, _ in forget_terms:
        assert all(torch.allclose(row, c_negative) for row in uncond)
    for _, uncond, _ in remain_terms:  # the reference's --sid_w_neg 0: remain terms keep ""
        assert all(torch.allclose(row, c_empty) for row in uncond)


def test_a_dropped_forget_row_of_the_fake_net_is_unconditional_on_both_branches(tiny_sd_dir):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, concept="nudity", anchor="", generator="teacher", fake_dropout=0.999))
    c_empty = trainer.embed([""])[0]
    _, uncond, cond = unconditional_branches(trainer)[1]  # the fake net trained on forget samples, every row dropped
    assert all(torch.allclose(row, c_empty) for row in torch.cat([uncond, cond]))


# ---------------------------------------------------------------- the optimizer and the checkpoints
def test_the_optimizer_is_adam_with_the_references_betas_without_a_first_moment_buffer():
    torch.manual_seed(0)
    ours_net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.SiLU(), torch.nn.Linear(7, 3))
    adam_net = copy.deepcopy(ours_net)
    ours = AdamWithoutFirstMoment(ours_net.parameters(), lr=1e-2, eps=1e-6)
    adam = torch.optim.Adam(adam_net.parameters(), lr=1e-2, betas=(0.0, 0.999), eps=1e-6, foreach=False)
    for _ in range(5):
        x = torch.randn(4, 5)
        for net, opt in ((ours_net, ours), (adam_net, adam)):
            opt.zero_grad()
            (net(x) ** 2).sum().backward()
            opt.step()
        assert all(torch.equal(p, q) for p, q in zip(ours_net.parameters(), adam_net.parameters()))
    assert all(set(state) == {"step", "exp_avg_sq"} for state in ours.state.values())  # no exp_avg: half the state


def test_both_networks_step_with_the_references_learning_rates_and_eps_and_free_the_fake_gradients(tiny_sd_dir):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator="teacher", lr=1e-6, fake_lr=3e-6))
    for optimizer, lr in ((trainer.optimizer, 1e-6), (trainer.fake_optimizer, 3e-6)):
        group = optimizer.param_groups[0]
        assert isinstance(optimizer, AdamWithoutFirstMoment)
        assert (group["lr"], group["beta2"], group["eps"]) == (lr, 0.999, 1e-6)
    trainer.fake_score_update()
    assert all(p.grad is None for p in trainer.fake.parameters())  # no UNet's worth of gradients held through G's update


def test_gradient_checkpointing_gives_the_same_gradients(tiny_sd_dir):
    def gradients(**kw):
        trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator="teacher", **kw))
        nets = (trainer.unet, trainer.teacher, trainer.fake)
        assert all(net.is_gradient_checkpointing == kw.get("gradient_checkpointing", False) for net in nets)
        trainer.compute_loss()
        return {k: p.grad.clone() for k, p in trainer.trainable.items()}

    plain, checkpointed = gradients(), gradients(gradient_checkpointing=True)
    assert all(torch.allclose(plain[k], checkpointed[k], rtol=1e-5, atol=1e-6) for k in plain)


def test_the_generators_gradients_are_clipped_by_value_before_its_step(tiny_sd_dir):
    def gradients(**kw):
        trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator="teacher", **kw))
        trainer.compute_loss()
        trainer.before_optimizer_step()
        return {k: p.grad.clone() for k, p in trainer.trainable.items()}

    raw, clipped = gradients(generator_grad_clip=0.0), gradients()  # the default: the reference's 1
    assert max(g.abs().max().item() for g in raw.values()) > 1
    assert all(torch.equal(clipped[k], raw[k].clamp(-1, 1)) for k in raw)


def test_an_interrupted_nudity_run_resumes_exactly_and_prints_its_checkpoint_size(tiny_sd_dir, generator_dir, tmp_path,
                                                                                 capsys):
    config = sfd_config(tiny_sd_dir, concept="nudity", anchor="", generator=str(generator_dir), steps=4, ema=0.5)
    full = SFDTrainer(config)
    full.train(tmp_path / "full")
    SFDTrainer(config).train(tmp_path / "cut", stop_after=2)
    printed = capsys.readouterr().out
    assert re.search(r"checkpoint: [\d.]+ (B|kB|MB|GB) at step 2 \(", printed)
    resumed = SFDTrainer(config)
    resumed.train(tmp_path / "cut", resume=True)
    assert all(torch.equal(v, resumed.trainable[k]) for k, v in full.trainable.items())
    assert same(weights(full.fake), weights(resumed.fake))
    for a, b in ((full.optimizer, resumed.optimizer), (full.fake_optimizer, resumed.fake_optimizer)):
        sa, sb = a.state_dict()["state"], b.state_dict()["state"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_grad_accum_steps_each_network_once_on_the_mean_of_its_micro_batches(tiny_sd_dir, tmp_path):
    """--grad-accum 2: the fake net steps once on the mean of two micro-batches' L_fake, then G
    once on the mean of two micro-batches' L_G (by hand from the same draws, in the same order)."""
    config = sfd_config(tiny_sd_dir, generator="teacher", steps=1, grad_accum=2)
    accumulated = SFDTrainer(config)
    accumulated.train(tmp_path / "out")

    t = SFDTrainer(config)
    t.fake.requires_grad_(True)
    fake_losses = []
    for _ in range(2):  # each term's backward on its own, scaled by 1/2, summed into .grad
        remain, forget = t.pick(t.remain), t.pick_pairs()[0]
        for loss in (t.fake_denoising_loss(remain), t.fake_denoising_loss(forget, t.c_negative)):
            (loss / 2).backward()
            fake_losses.append(loss.item())
    t.fake_optimizer.step()
    t.fake.zero_grad(set_to_none=True)
    t.fake.requires_grad_(False)
    generator_losses = []
    for _ in range(2):
        c_r = t.embed(t.pick(t.remain))
        remain = t.sid_term(c_r, c_r, c_r)
        (remain / 2).backward()
        forget_prompts, override_prompts = t.pick_pairs()
        c_f, c_a = t.embed(forget_prompts), t.embed(override_prompts)
        forget = t.sid_term(c_f, c_a, c_f, t.c_negative)
        (forget / 2).backward()
        generator_losses += [remain.item(), forget.item()]
    t.before_optimizer_step()  # the reference's clip by value
    t.optimizer.step()

    assert fake_losses[:2] != fake_losses[2:] and generator_losses[:2] != generator_losses[2:]  # two micro-batches
    for k, p in accumulated.trainable.items():
        assert torch.equal(p, t.trainable[k]), k
    for (n, p), q in zip(accumulated.fake.named_parameters(), t.fake.parameters()):
        assert torch.equal(p, q), n
    for optimizer in (accumulated.optimizer, accumulated.fake_optimizer):  # one step each
        assert all(int(s["step"]) == 1 for s in optimizer.state_dict()["state"].values())
    assert all(p.grad is None for p in accumulated.fake.parameters())


def test_a_step_holds_one_networks_gradients_at_a_time(tiny_sd_dir):
    """Memory plan: G's gradients are None through the fake update, the fake net's through G's."""
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator="teacher"))
    seen = []
    hook = trainer.fake.register_forward_pre_hook(
        lambda *_: seen.append(all(p.grad is None for p in trainer.trainable.values())))
    trainer.fake_score_update()
    hook.remove()
    assert seen and all(seen)
    trainer.generator_backward()
    assert all(p.grad is None for p in trainer.fake.parameters())
    assert all(p.grad is not None for p in trainer.trainable.values())
    assert all(p.dtype == torch.float32 for p in trainer.teacher.parameters())  # fp32 run: fp32 teacher


def test_under_bf16_the_teacher_is_frozen_in_bf16_and_both_trained_nets_in_fp32(tiny_sd_dir):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, generator="teacher", dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in trainer.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in [*trainer.fake.parameters(), *trainer.trainable.values()])
