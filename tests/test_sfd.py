"""SFD (score forgetting distillation into a one-step generator) on the tiny random SD: the loss,
the alternation of the two updates, the one-step product and its loaders, two-stage caching."""
import json

import pytest
import torch

from erasure.cli import run
from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.erasure_files import CONFIG_NAME, WEIGHTS_NAME
from erasure.files import load_tensors
from erasure.pipelines import ErasedPipeline, OneStepScheduler
from erasure.trainers.sfd import SFDTrainer, sid_generator_loss

QUICK = {"method": "sfd", "concept": "circle", "anchor": "a square", "steps": 2, "lr": 1e-3, "fake_lr": 1e-3,
         "batch_size": 2, "checkpoint_every": 0, "generator": "teacher"}  # the tiny model has no distilled generator


def sfd_config(base, **kw):
    return EraseConfig.from_dict({**QUICK, "base_model": str(base), **kw})


def weights(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def sfd_dir(tiny_sd_dir, tmp_path_factory):
    """One trained SFD erasure, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("sfd") / "out"
    trainer = SFDTrainer(sfd_config(tiny_sd_dir))
    trainer.train(out)
    return out, trainer


def test_generator_loss_is_the_hand_computed_sid_loss():
    y_real = torch.tensor([[1.0, 2.0], [0.5, -1.0]]).view(2, 1, 1, 2)
    y_fake = torch.tensor([[0.0, 1.0], [1.5, -1.0]]).view(2, 1, 1, 2)
    x_g = torch.tensor([[2.0, 0.0], [0.0, 1.0]]).view(2, 1, 1, 2).requires_grad_(True)
    # sample 0: w = mean(|2-1|, |0-2|) = 1.5; d = (1, 1); (y_real - x_g) = (-1, 2)
    #   alpha 1.2: sum d * ((y_real - x_g) - 1.2 d) / w = (1*(-2.2) + 1*(0.8)) / 1.5 = -1.4 / 1.5
    # sample 1: w = mean(|0-0.5|, |1+1|) = 1.25; d = (-1, 0); (y_real - x_g) = (0.5, -2)
    #   sum = (-1)*(0.5 + 1.2) / 1.25 = -1.7 / 1.25
    expected = (-1.4 / 1.5 - 1.7 / 1.25) / 2
    loss = sid_generator_loss(y_real, y_fake, x_g, alpha=1.2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # alpha 1 is the reference's short form sum (y_real - y_fake)(y_fake - x_g) / w
    short = ((y_real - y_fake) * (y_fake - x_g) / torch.tensor([1.5, 1.25]).view(2, 1, 1, 1)).sum() / 2
    assert sid_generator_loss(y_real, y_fake, x_g, alpha=1.0).item() == pytest.approx(short.item(), rel=1e-6)
    # w is a constant: the gradient in x_g is -(y_real - y_fake) / w / B
    loss.backward()
    grad = -(y_real - y_fake) / torch.tensor([1.5, 1.25]).view(2, 1, 1, 1) / 2
    assert torch.allclose(x_g.grad, grad)


def test_fake_and_generator_updates_alternate_and_each_touches_only_its_own_weights(tiny_sd_dir, tmp_path):
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, fake_updates_per_generator=2, steps=2))
    teacher = weights(trainer.teacher)
    events, before = [], {}

    def pre(name):
        def hook(opt, args, kwargs):
            before[name] = (weights(trainer.unet), weights(trainer.fake))
        return hook

    def post(name):
        def hook(opt, args, kwargs):
            g0, f0 = before[name]
            g1, f1 = weights(trainer.unet), weights(trainer.fake)
            events.append((name, not same(g0, g1), not same(f0, f1)))
        return hook

    for name, opt in (("fake", trainer.fake_optimizer), ("generator", trainer.optimizer)):
        opt.register_step_pre_hook(pre(name))
        opt.register_step_post_hook(post(name))
    trainer.train(tmp_path / "out")
    assert [e[0] for e in events] == ["fake", "fake", "generator"] * 2
    # (name, generator changed, fake changed): each update moves its own network only
    assert all(e == ("fake", False, True) for e in events if e[0] == "fake")
    assert all(e == ("generator", True, False) for e in events if e[0] == "generator")
    assert same(teacher, weights(trainer.teacher))  # the teacher never changes


def test_the_teacher_is_the_base_model(sfd_dir, tiny_sd_dir):
    _, trainer = sfd_dir
    base = ErasedPipeline.from_pretrained(tiny_sd_dir).unet
    assert same(weights(base), weights(trainer.teacher))
    assert not same(weights(base), weights(trainer.unet))


def test_the_erasure_holds_the_generator_alone_and_samples_it_in_one_step(sfd_dir, tiny_sd_dir):
    out, trainer = sfd_dir
    manifest = json.loads((out / CONFIG_NAME).read_text())
    unet_keys = {f"unet.{n}" for n, _ in trainer.unet.named_parameters()}
    assert set(manifest["changed_tensors"]) == unet_keys == set(load_tensors(out / WEIGHTS_NAME))
    assert manifest["sampling"] == {"one_step": True, "t_init": 625, "num_inference_steps": 1, "guidance_scale": 1.0}
    saved = load_tensors(out / WEIGHTS_NAME)
    assert all(torch.equal(saved[f"unet.{n}"], p) for n, p in trainer.unet.named_parameters())  # G, not the fake net
    assert not all(torch.equal(saved[f"unet.{n}"], p) for n, p in trainer.fake.named_parameters())

    pipe = ErasedPipeline.from_pretrained(out)
    assert isinstance(pipe.scheduler, OneStepScheduler) and pipe.one_step
    assert torch.equal(pipe.scheduler.alphas_cumprod, trainer.alphas_cumprod.cpu())
    def gen():
        return torch.Generator().manual_seed(5)

    default = pipe("a red circle", generator=gen(), output_type="pt").images
    explicit = pipe("a red circle", generator=gen(), output_type="pt", num_inference_steps=1, guidance_scale=1.0).images
    assert torch.equal(default, explicit)
    assert isinstance(trainer.pipe, ErasedPipeline)  # once saved, the trainer's pipeline samples like the product
    assert torch.equal(default, trainer.pipe("a red circle", generator=gen(), output_type="pt").images)
    # the pipeline's one step is the trainer's generator: x_g = G(z, c) from the same z
    latent = pipe("a red circle", generator=gen(), output_type="latent").images
    z = torch.randn((1, 4, 16, 16), generator=gen())
    with torch.no_grad():
        x_g = trainer.generate(trainer.embed(["a red circle"]), z)
    assert torch.allclose(latent, x_g, atol=1e-5)


def test_one_step_sampling_rejects_more_steps_and_other_schedulers(sfd_dir):
    from diffusers import DDIMScheduler

    out, _ = sfd_dir
    pipe = ErasedPipeline.from_pretrained(out)
    with pytest.raises(UserError, match="one-step generator .*num_inference_steps=1 \\(got 3\\)"):
        pipe("a red circle", num_inference_steps=3)
    with pytest.raises(UserError, match="num_inference_steps=1"):
        pipe("a red circle", None, None, 25)  # positional, as diffusers allows
    with pytest.raises(UserError, match="OneStepScheduler"):
        pipe.scheduler.set_timesteps(50)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(UserError, match="samples with OneStepScheduler only \\(got DDIMScheduler\\)"):
        pipe("a red circle")


@pytest.mark.parametrize("settings, message", [
    ({"alpha": 0.0}, "--alpha must be positive"),
    ({"alpha": -1.0}, "--alpha must be positive"),
    ({"anchor": "Circle"}, "--anchor 'Circle' is the concept itself"),
    ({"t_init": 0}, "--t-init must be at least 1"),
    ({"two_stage": True, "distill_steps": 0}, "--distill-steps must be at least 1"),
    ({"fake_updates_per_generator": 0}, "--fake-updates-per-generator must be at least 1"),
])
def test_bad_settings_are_one_line_errors(settings, message, tiny_sd_dir):
    with pytest.raises(UserError, match=message):
        sfd_config(tiny_sd_dir, **settings)


def test_t_init_beyond_the_schedule_names_the_valid_range(tiny_sd_dir):
    with pytest.raises(UserError, match=r"--t-init must be in \[1, 999\] for this model \(got 1000\)"):
        SFDTrainer(sfd_config(tiny_sd_dir, t_init=1000))
    with pytest.raises(UserError, match=r"t_init must be in \[1, 999\]"):
        OneStepScheduler(t_init=1000)


def test_an_override_equal_to_the_concept_is_refused_by_the_trainer_too(tiny_sd_dir):
    config = sfd_config(tiny_sd_dir)
    config.anchor = " CIRCLE "  # past the config's own check (e.g. a default anchor): the trainer refuses it
    with pytest.raises(UserError, match="the override .* is the concept itself"):
        SFDTrainer(config)


def test_override_prompts_replace_the_concept_words(tiny_sd_dir, tmp_path):
    prompts = tmp_path / "forget.txt"
    prompts.write_text("a photo of Brad Pitt\nbrad pitt smiling\na man on a beach\n")
    trainer = SFDTrainer(sfd_config(tiny_sd_dir, concept="Brad Pitt", anchor="a middle aged man",
                                    concept_prompts=str(prompts)))
    assert trainer.forget == ["a photo of Brad Pitt", "brad pitt smiling", "a man on a beach"]
    assert trainer.override == ["a photo of a middle aged man", "a middle aged man smiling", "a middle aged man"]
    from erasure.eval.suites import load_suite
    coco = [r.prompt for r in load_suite("coco-10k").rows()]  # remain: the second half of the COCO captions,
    assert trainer.remain == coco[len(coco) // 2:]  # disjoint from the coco-10k suite run with --limit <= 4984


def test_two_stage_distils_once_and_reuses_the_cached_generator(tiny_sd_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASURE_CACHE", str(tmp_path / "cache"))
    calls = []
    distill = SFDTrainer.distill
    monkeypatch.setattr(SFDTrainer, "distill", lambda self: calls.append(1) or distill(self))
    config = sfd_config(tiny_sd_dir, two_stage=True, distill_steps=2)
    base = weights(ErasedPipeline.from_pretrained(tiny_sd_dir).unet)

    first = SFDTrainer(config)
    distilled = weights(first.unet)
    assert len(calls) == 1 and not same(base, distilled)
    cached = list((tmp_path / "cache" / "sfd").glob("*.safetensors"))
    assert len(cached) == 1
    first.train(tmp_path / "first")
    assert json.loads((tmp_path / "first" / CONFIG_NAME).read_text())["sfd_stage_one"] == str(cached[0])

    # another concept: stage one comes from the cache, untouched
    other = SFDTrainer(sfd_config(tiny_sd_dir, two_stage=True, distill_steps=2, concept="star"))
    assert len(calls) == 1 and same(distilled, weights(other.unet))
    assert same(base, weights(other.fake)) and same(base, weights(other.teacher))  # stage two starts afresh
    # the same run from the cache ends exactly where the run that distilled ended
    again = SFDTrainer(config)
    again.train(tmp_path / "again")
    assert len(calls) == 1 and same(weights(first.unet), weights(again.unet))
    # a different distillation setting is a different cache entry
    SFDTrainer(sfd_config(tiny_sd_dir, two_stage=True, distill_steps=1))
    assert len(calls) == 2 and len(list((tmp_path / "cache" / "sfd").glob("*.safetensors"))) == 2


def test_export_is_a_diffusers_folder_that_samples_the_same_image_in_one_step(sfd_dir, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from erasure.model_ref import is_one_step, model_sampling

    out, _ = sfd_dir
    assert run(["export", str(out), "--out", str(tmp_path / "full")]) == 0
    index = json.loads((tmp_path / "full" / "model_index.json").read_text())
    assert index["scheduler"] == ["erasure.pipelines.one_step", "OneStepScheduler"]
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "full", local_files_only=True)  # erasure is imported
    assert isinstance(plain.scheduler, OneStepScheduler)
    kw = {"output_type": "pt", "num_inference_steps": 1, "guidance_scale": 1.0}
    a = plain("a red circle", generator=torch.Generator().manual_seed(5), **kw).images
    b = ErasedPipeline.from_pretrained(out)("a red circle", generator=torch.Generator().manual_seed(5), **kw).images
    assert torch.equal(a, b)
    assert is_one_step(tmp_path / "full") and is_one_step(out)
    assert model_sampling(tmp_path / "full")["num_inference_steps"] == 1 == model_sampling(out)["num_inference_steps"]


def test_generate_and_eval_sample_a_one_step_erasure_in_one_step(sfd_dir, tmp_path):
    from erasure.eval.runner import evaluate, plan
    from erasure.eval.suites import custom_suite

    out, _ = sfd_dir
    assert run(["generate", "--model", str(out), "--prompt", "a red circle", "--num-images", "2", "--device", "cpu",
                "--out", str(tmp_path / "gen")]) == 0
    assert (tmp_path / "gen" / "001.png").exists()
    assert run(["generate", "--model", str(out), "--prompt", "a red circle", "--steps", "25", "--device", "cpu",
                "--out", str(tmp_path / "gen25")]) == 2  # a one-line error, not 25 silent copies of one step
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,object,evaluation_guidance\na red circle,circle,7.5\n")
    result, images, _ = evaluate(out, custom_suite(csv, ["mini_classifier"], 2), tmp_path / "cache", device="cpu")
    assert result["sampling"]["num_inference_steps"] == 1 and result["sampling"]["guidance_scale"] == 1.0
    assert images.shape[0] == 2
    rows = custom_suite(csv, ["mini_classifier"], 1).rows()
    assert plan(rows, 1, 0, result["sampling"], row_guidance=False)[0]["guidance"] == 1.0  # the row's 7.5 ignored
    assert plan(rows, 1, 0, result["sampling"])[0]["guidance"] == 7.5  # a multi-step model keeps it
