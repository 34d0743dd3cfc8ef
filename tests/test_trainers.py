"""Shared trainer tests, parametrised over every registered method: a new method file is
covered as soon as it registers itself."""
import json
import re

import pytest
import torch

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.erasure_files import CONFIG_NAME, WEIGHTS_NAME
from erasure.pipelines import ErasedPipeline
from erasure.registry import get_method, method_names
from erasure.targets import TARGETS
from erasure.trainers.base import Trainer
from erasure.trainers.base import TrainingDiverged

# the methods that train through the one loop (trainers/base.py); a composed method (adv-esd) is
# made of these and is tested in tests/test_image_attacks.py
METHODS = [m for m in method_names() if issubclass(get_method(m).trainer_cls, Trainer)]


# per method, what makes a 3-step run on the tiny model quick (few self-generated images)
QUICK = {"salun": {"n_forget": 4, "n_retain": 4, "batch_size": 2, "data_steps": 2},
         "doco": {"n_anchor": 4, "batch_size": 2, "data_steps": 2, "disc_warmup": 1},
         "advunlearn": {"attack_warmup": 1, "attack_steps": 2, "retain_batch": 2, "ddim_steps": 4},
         "sfd": {"batch_size": 2, "fake_lr": 1e-3, "generator": "teacher"}}
QUICK["advunlearn-x"] = QUICK["advunlearn"]  # AdvUnlearn's trainer on the UNet's cross-attention


def make_config(method, base, **kw):
    return EraseConfig.from_dict({"method": method, "concept": "circle", "anchor": "a square", "base_model": str(base),
                                  "steps": 3, "lr": 1e-3, "checkpoint_every": 0, **QUICK.get(method, {}), **kw})


def trainer_for(config):
    return get_method(config.method).trainer_cls(config)


def snapshot(pipe):
    return {f"{c}.{n}": p.detach().clone() for c in ("unet", "text_encoder")
            for n, p in getattr(pipe, c).named_parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_only_the_presets_weights_change(method, tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config(method, tiny_sd_dir))
    before = snapshot(trainer.pipe)
    trainer.train(tmp_path / "out")
    after = snapshot(trainer.pipe)
    rule = TARGETS[trainer.config.target]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = {k for k in before if rule(*k.split(".", 1))}
    assert changed, "training changed nothing"
    assert changed <= allowed, sorted(changed - allowed)[:5]
    manifest = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert set(manifest["changed_tensors"]) == allowed


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_onto_a_fresh_base_reproduces_outputs(method, tiny_sd_dir, tmp_path):
    from erasure.model_ref import is_one_step

    trainer = trainer_for(make_config(method, tiny_sd_dir))
    trainer.train(tmp_path / "out")
    # a one-step generator (SFD) samples in one step, the trainer's pipeline too once saved; others in 3
    kw = dict(num_inference_steps=1 if is_one_step(tmp_path / "out") else 3, output_type="pt")
    trained = trainer.pipe("a red circle", generator=torch.Generator().manual_seed(5), **kw).images
    loaded = ErasedPipeline.from_pretrained(tmp_path / "out")
    assert isinstance(loaded, ErasedPipeline)
    again = loaded("a red circle", generator=torch.Generator().manual_seed(5), **kw).images
    assert torch.equal(trained, again)
    base = ErasedPipeline.from_pretrained(tiny_sd_dir)("a red circle", generator=torch.Generator().manual_seed(5), **kw).images
    assert not torch.equal(base, again)


@pytest.mark.parametrize("method", METHODS)
def test_config_json_round_trips(method, tiny_sd_dir):
    config = make_config(method, tiny_sd_dir, seed=7)
    again = EraseConfig.from_json(config.to_json())
    assert type(again) is type(config) and again == config


@pytest.mark.parametrize("method", METHODS)
def test_resume_matches_an_uninterrupted_run(method, tiny_sd_dir, tmp_path, capsys):
    config = make_config(method, tiny_sd_dir, steps=4)
    full = trainer_for(config)
    full.train(tmp_path / "full")
    capsys.readouterr()
    trainer_for(config).train(tmp_path / "cut", stop_after=2)
    assert (tmp_path / "cut" / "checkpoint" / "state.json").exists()
    assert re.search(r"checkpoint: [\d.]+ (B|kB|MB|GB) at step 2 \(", capsys.readouterr().out)  # its size shown
    resumed = trainer_for(config)
    resumed.train(tmp_path / "cut", resume=True)
    for k, v in full.trainable.items():
        assert torch.equal(v, resumed.trainable[k]), k
    assert not (tmp_path / "cut" / "checkpoint").exists()


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_sd_dir, tmp_path):
    config = make_config("esd-x", tiny_sd_dir, steps=5, checkpoint_every=1)
    trainer = trainer_for(config)
    real_loss = trainer.compute_loss
    trainer.compute_loss = lambda: real_loss() * (float("nan") if trainer.step >= 2 else 1.0)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 2"):
        trainer.train(tmp_path / "out")
    state = json.loads((tmp_path / "out" / "checkpoint" / "state.json").read_text())
    assert state["step"] == 2
    assert not (tmp_path / "out" / CONFIG_NAME).exists()


def test_esd_target_is_the_papers_equation(tiny_sd_dir):
    """With eta = 0 the target is eps*(c_0): training pulls eps(c_f) toward the unconditional."""
    trainer = trainer_for(make_config("esd-x", tiny_sd_dir, negative_guidance=0.0))
    x = torch.randn(1, 4, 16, 16)
    t = torch.tensor([500])
    with torch.no_grad():
        eps_0 = trainer.frozen_unet(x, t, encoder_hidden_states=trainer.c_empty).sample
        eps_f = trainer.frozen_unet(x, t, encoder_hidden_states=trainer.c_forget[0][:1]).sample
    trainer.draw_xt = lambda k, b: (x, t, torch.tensor([0]))
    loss = trainer.compute_loss()
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(eps_f, eps_0).item(), rel=1e-5)


def test_siblings_baseline_averages_the_concepts_siblings():
    """MiniSD's ESD baseline: c_0 is each forget prompt with the concept replaced by every other
    object, their predictions averaged; the target is Eq. 3 from that mean."""
    from erasure.sampling import encode_prompts
    from erasure.worlds import get_world

    mini_siblings, mini_substitute = get_world("mini").siblings, get_world("mini").substitute

    assert mini_siblings("circle") == ["square", "triangle", "star", "heart", "cross"]
    assert "red" not in mini_siblings("red") and len(mini_siblings("red")) >= 3
    with pytest.raises(UserError, match="does not know"):
        mini_siblings("giraffe")
    trainer = trainer_for(EraseConfig.from_dict({"method": "esd-x", "concept": "circle", "base_model": "minisd",
                                                 "steps": 1, "checkpoint_every": 0, "negative_guidance": 1.0}))
    assert trainer.config.baseline == "siblings"  # MiniSD's default
    prompt = trainer.forget_prompt_sets[0][3]
    assert trainer.c_baseline[0].shape[:2] == (len(trainer.forget_prompt_sets[0]), 5)
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([400])
    unet, tok, enc = trainer.frozen_unet, trainer.tokenizer, trainer.text_encoder
    with torch.no_grad():
        eps = lambda p: unet(x, t, encoder_hidden_states=encode_prompts(tok, enc, [p], "cpu")).sample
        eps_0 = torch.stack([eps(mini_substitute(prompt, "circle", o)) for o in mini_siblings("circle")]).mean(0)
        eps_f = eps(prompt)
        target, _ = trainer.esd_target(x, t, 0, torch.tensor([3]))
    torch.testing.assert_close(target, eps_f - 2 * (eps_f - eps_0), atol=1e-4, rtol=1e-4)


def test_siblings_baseline_needs_minisd(tiny_sd_dir):
    with pytest.raises(UserError, match="siblings"):
        trainer_for(make_config("esd-x", tiny_sd_dir, baseline="siblings"))


def test_minisd_concepts_train_on_world_captions_never_on_evaluation_prompts():
    from erasure.worlds import get_world
    from erasure.worlds.mini.concepts import evaluation_prompts as _mini_eval_prompts
    from erasure.worlds.mini.world import parse_caption

    mini, sd = get_world("mini"), get_world("stable-diffusion")
    prompts = mini.concept_prompts("circle", "auto", n=64)
    assert prompts[0] == "circle" and len(set(prompts)) == 64
    assert all(parse_caption(p)["object"] == "circle" for p in prompts)
    assert any("disk" in p or "round shape" in p or "disc" in p for p in prompts)  # synonyms are expressed
    assert not set(p.lower() for p in prompts) & _mini_eval_prompts()
    assert sd.concept_prompts("circle", "auto") == ["circle"]  # SD: the papers' recipe
    assert mini.concept_prompts("circle", "word") == ["circle"]


def test_minisd_retain_captions_name_no_part_of_the_concept_and_grow_as_asked():
    from erasure.worlds import get_world
    from erasure.worlds.mini.concepts import evaluation_prompts as _mini_eval_prompts
    from erasure.worlds.mini.world import parse_caption

    small, large = (get_world("mini").retain_prompts("circle", "square", n=n) for n in (64, 256))
    assert len(set(large)) == 256 and large[:64] == small  # a larger set extends the default one (same seed)
    assert not any(parse_caption(p)["object"] == "circle" for p in large)
    assert {parse_caption(p)["object"] for p in large} == {"square", "triangle", "star", "heart", "cross"}
    assert not set(p.lower() for p in large) & _mini_eval_prompts()
    assert get_world("stable-diffusion").retain_prompts("circle", "square") == ["square"]


def test_advunlearn_retain_set_on_minisd_follows_retain_captions():
    from erasure.worlds import get_world
    from erasure.worlds.mini.world import parse_caption

    retain_prompts = get_world("mini").retain_prompts

    def retain_set(**kw):
        return trainer_for(EraseConfig.from_dict({"method": "advunlearn", "concept": "circle", "base_model": "minisd",
                                                  "steps": 1, "checkpoint_every": 0, **kw})).retain_set

    captions = retain_set(retain_siblings=False)
    assert captions == retain_prompts("circle", "square", n=64, seed=1)  # default: 64, seed + 1
    assert retain_set(retain_captions=100, seed=3, retain_siblings=False) == retain_prompts(
        "circle", "square", n=100, seed=4)
    with_siblings = retain_set()  # MiniSD's default adds the siblings of the forget prompts
    assert with_siblings[:64] == captions and len(with_siblings) > 64 + 200
    both = retain_set(concept="circle, square")  # erased together: nothing kept names either
    assert not [p for p in both if parse_caption(p)["object"] in ("circle", "square")]
    assert {parse_caption(p)["object"] for p in both} == {"triangle", "star", "heart", "cross"}
    assert "a yellow cross with a checkerboard pattern" in with_siblings  # from "a yellow disc with a checkerboard pattern"


def test_minisd_retain_prompts_never_keep_a_concept_of_the_run():
    """Trainer.retain_prompts, which SalUn, DoCo and AdvUnlearn build their MiniSD retain sets from."""
    from erasure.worlds.mini.world import parse_caption

    trainer = trainer_for(EraseConfig.from_dict({"method": "esd-x", "concept": "circle, square", "base_model": "minisd",
                                                 "steps": 1, "checkpoint_every": 0}))
    for concept in ("circle", "square"):
        kept = trainer.retain_prompts(concept)
        assert kept and {parse_caption(p)["object"] for p in kept} <= {"triangle", "star", "heart", "cross"}
    alone = trainer_for(EraseConfig.from_dict({"method": "esd-x", "concept": "circle", "base_model": "minisd",
                                               "steps": 1, "checkpoint_every": 0}))
    assert "square" in {parse_caption(p)["object"] for p in alone.retain_prompts("circle")}


def test_minisd_sibling_prompts_replace_the_concept_by_each_sibling():
    from erasure.worlds import get_world
    from erasure.worlds.mini.concepts import evaluation_prompts as _mini_eval_prompts
    from erasure.worlds.mini.world import parse_caption

    near = get_world("mini").sibling_prompts(["a polka-dot green disk", "a red circle, striped style"], "circle")
    expected = [f"a polka-dot green {o}" for o in ("square", "triangle", "star", "heart", "cross")] + [
        f"a red {o}, striped style" for o in ("square", "triangle", "star", "heart", "cross")]
    assert near == [p for p in expected if p not in _mini_eval_prompts()] and len(near) >= 8
    assert all(parse_caption(p)["object"] != "circle" for p in near)


def test_retain_siblings_off_minisd_is_a_one_line_error(tiny_sd_dir):
    with pytest.raises(UserError, match="--retain-siblings needs MiniSD's world"):
        trainer_for(make_config("advunlearn", tiny_sd_dir, retain_siblings=True))


def test_concept_prompt_file(tmp_path):
    from erasure.worlds import get_world

    concept_prompts = get_world("stable-diffusion").concept_prompts
    (tmp_path / "p.txt").write_text("a nude person\n\nnudity\n")
    assert concept_prompts("nudity", str(tmp_path / "p.txt")) == ["a nude person", "nudity"]
    (tmp_path / "p.csv").write_text("text\nfoo\n")
    with pytest.raises(UserError, match="has no 'prompt' column"):
        concept_prompts("nudity", str(tmp_path / "p.csv"))
    with pytest.raises(UserError, match="no file at"):
        concept_prompts("nudity", str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("settings, message", [
    ({"method": "esd-q"}, "unknown method 'esd-q'; choose one of: adv-esd, advunlearn, advunlearn-x, doco, esd-all, esd-u, esd-x, esd-x-strict, salun, sfd"),
    ({"concept": "  "}, "the concept is empty"),
    ({"steps": 0}, "--steps must be at least 1"),
    ({"target": "esd-z"}, "unknown weight preset 'esd-z'"),
    ({"sample_with": "both"}, "--sample-with must be frozen or trained"),
    ({"sample_with": "trained"}, "--sample-with trained samples afresh every step"),
    ({"dtype": "float16"}, "float16 training needs loss scaling"),
    ({"method": "advunlearn", "retain_captions": 0}, "--retain-captions must be at least 1"),
    ({"method": "advunlearn", "retain_trajectories": 0}, "--retain-trajectories must be at least 1"),
    ({"method": "advunlearn", "retain_siblings": "ture"}, "--retain-siblings takes true or false (got 'ture')"),
    ({"method": "sfd", "two_stage": "2"}, "--two-stage takes true or false (got '2')"),
])
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        EraseConfig.from_dict({"method": "esd-x", "concept": "circle", **settings})


@pytest.mark.parametrize("word, value", [("true", True), (" Yes", True), ("on", True), ("1", True),
                                         ("false", False), ("No ", False), ("off", False), ("0", False)])
def test_boolean_settings_read_their_cli_words(word, value):
    """Every bool field of every method takes the same words (the CLI passes strings)."""
    assert EraseConfig.from_dict({"method": "advunlearn", "concept": "circle", "fast_attack": word}).fast_attack is value
    assert EraseConfig.from_dict({"method": "sfd", "concept": "circle", "two_stage": word}).two_stage is value


def test_erasure_onto_a_mismatched_base_lists_the_tensors(tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=1))
    trainer.train(tmp_path / "out")
    from tiny import build_tiny_pipeline
    other = build_tiny_pipeline()
    other.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k = torch.nn.Linear(32, 8, bias=False)
    from erasure.erasure_files import apply_erasure
    with pytest.raises(UserError, match=r"does not fit the base model \(1 tensor\(s\): unet.down_blocks.1.*to_k.weight"):
        apply_erasure(other, tmp_path / "out")


def test_a_different_base_warns(tiny_sd_dir, tmp_path):
    trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=1)).train(tmp_path / "out")
    from tiny import build_tiny_pipeline
    other = build_tiny_pipeline(seed=1)
    from erasure.erasure_files import apply_erasure
    with pytest.warns(UserWarning, match="base model differs"):
        apply_erasure(other, tmp_path / "out")


@pytest.mark.parametrize("damage, message", [
    ("no_manifest", "has no erasure_config.json"),
    ("corrupt", "is corrupt"),
    ("no_weights", "no erasure_model.safetensors"),
])
def test_broken_erasure_folders_are_clear_errors(damage, message, tiny_sd_dir, tmp_path):
    trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=1)).train(tmp_path / "out")
    if damage == "no_manifest":
        (tmp_path / "out" / CONFIG_NAME).unlink()
    elif damage == "corrupt":
        (tmp_path / "out" / CONFIG_NAME).write_text("{not json")
    else:
        (tmp_path / "out" / WEIGHTS_NAME).unlink()
    with pytest.raises(UserError, match=message):
        ErasedPipeline.from_pretrained(tmp_path / "out")


def test_pickle_weights_are_refused(tmp_path):
    from erasure.files import load_tensors
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="pickle checkpoint, which erasure never loads"):
        load_tensors(bad)


@pytest.mark.parametrize("extra", [{"refresh_every": 1}, {"refresh_every": 1, "sample_with": "trained"},
                                   {"erase_from": "a red shape"}, {"concept": "circle, star", "batch_size": 2}])
def test_esd_variants_train_and_differ_from_the_base(extra, tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=2, **extra))
    before = {k: v.detach().clone() for k, v in trainer.trainable.items()}
    trainer.train(tmp_path / "out")
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable.items())


def test_bf16_keeps_trained_weights_fp32_and_frozen_ones_bf16(tiny_sd_dir, tmp_path):
    trainer = trainer_for(make_config("esd-x-strict", tiny_sd_dir, steps=2, dtype="bfloat16"))
    assert all(p.dtype == torch.float32 for p in trainer.trainable.values())
    frozen = [p for n, p in trainer.unet.named_parameters() if f"unet.{n}" not in trainer.trainable]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert next(trainer.frozen_unet.parameters()).dtype == torch.bfloat16
    before = {k: v.detach().clone() for k, v in trainer.trainable.items()}
    trainer.train(tmp_path / "out")
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable.items())
    assert ErasedPipeline.from_pretrained(tmp_path / "out").unet.dtype == torch.float32


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_in_bf16(method, tiny_sd_dir, tmp_path):
    """bf16 is the default on CUDA: every method must run in it (a trained text encoder mixes
    fp32 layers with bf16 embeddings; AdvUnlearn once crashed on that)."""
    trainer = trainer_for(make_config(method, tiny_sd_dir, steps=2, dtype="bfloat16"))
    before = {k: v.detach().clone() for k, v in trainer.trainable.items()}
    trainer.train(tmp_path / "out")
    assert all(v.dtype == torch.float32 for v in trainer.trainable.values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.trainable.items())


def test_cosine_schedule_decays_the_learning_rate_and_resumes_exactly(tiny_sd_dir, tmp_path):
    import math

    config = make_config("esd-x", tiny_sd_dir, steps=4, lr_schedule="cosine")
    full = trainer_for(config)
    full.train(tmp_path / "full")
    assert full.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    trainer_for(config).train(tmp_path / "cut", stop_after=2)
    resumed = trainer_for(config)
    resumed.train(tmp_path / "cut", resume=True)
    assert all(torch.equal(v, resumed.trainable[k]) for k, v in full.trainable.items())
    with pytest.raises(UserError, match="--lr-schedule must be constant or cosine"):
        make_config("esd-x", tiny_sd_dir, lr_schedule="linear")


def test_ema_weights_are_saved_and_resume_exactly(tiny_sd_dir, tmp_path):
    from erasure.erasure_files import WEIGHTS_NAME
    from erasure.files import load_tensors

    plain = trainer_for(make_config("esd-x", tiny_sd_dir, steps=4))
    plain.train(tmp_path / "plain")
    config = make_config("esd-x", tiny_sd_dir, steps=4, ema=0.5)
    full = trainer_for(config)
    base = {k: p.detach().clone() for k, p in full.trainable.items()}
    full.train(tmp_path / "full")
    saved = load_tensors(tmp_path / "full" / WEIGHTS_NAME)
    # the same optimizer steps as the plain run, averaged: between the base and the last step
    assert any(not torch.equal(saved[k], plain.trainable[k]) for k in saved)
    assert all(torch.equal(saved[k], full.trainable[k]) for k in saved)
    k = next(iter(saved))
    assert (saved[k] - base[k]).abs().sum() < (plain.trainable[k] - base[k]).abs().sum()
    trainer_for(config).train(tmp_path / "cut", stop_after=2)
    resumed = trainer_for(config)
    resumed.train(tmp_path / "cut", resume=True)
    assert all(torch.equal(v, resumed.trainable[k]) for k, v in full.trainable.items())
