"""Prompt attacks and ASR on the tiny random SD (and MiniSD's judge for the ASR plumbing)."""
import json

import pytest
import torch

from erasure.attacks.discrete import (
    DiscreteAttackConfig,
    attack_timesteps,
    discrete_attack,
    discrete_attack_batch,
    project_to_simplex,
)
from erasure.attacks.soft import soft_prompt_attack
from erasure.cli import run
from erasure.errors import UserError
from erasure.eval.asr import asr_summary, run_attack, target_rows
from erasure.eval.suites import Row
from erasure.pipelines import load_pipeline
from erasure.sampling import encode_prompts
from erasure.worlds import world_for


@pytest.fixture()
def tiny_pipe(tiny_sd_dir):
    pipe = load_pipeline(tiny_sd_dir)
    for m in (pipe.unet, pipe.text_encoder, pipe.vae):
        m.requires_grad_(False)
    return pipe


def test_soft_prompt_attack_lowers_its_loss(tiny_pipe):
    torch.manual_seed(0)
    shape = (2, tiny_pipe.unet.config.in_channels, tiny_pipe.unet.config.sample_size, tiny_pipe.unet.config.sample_size)
    x_t, t = torch.randn(shape), torch.tensor([500, 500])
    c = encode_prompts(tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["a red circle"] * 2, "cpu")
    target = tiny_pipe.unet(x_t, t, encoder_hidden_states=c).sample + 0.5  # something the prompt does not give
    adv, losses = soft_prompt_attack(tiny_pipe.unet, tiny_pipe.tokenizer, tiny_pipe.text_encoder, ["a red circle"] * 2,
                                     x_t, t, target, n_tokens=2, steps=15, lr=0.05,
                                     generator=torch.Generator().manual_seed(0))
    assert adv.shape == (2, tiny_pipe.text_encoder.config.hidden_size)
    assert losses[-1] < losses[0]


def test_simplex_projection():
    v = torch.randn(4, 50) * 3
    p = project_to_simplex(v)
    assert (p >= 0).all() and torch.allclose(p.sum(-1), torch.ones(4))
    already = torch.softmax(torch.randn(3, 10), -1)
    assert torch.allclose(project_to_simplex(already), already, atol=1e-6)


def test_attack_timesteps_follow_unlearndiffatk():
    assert attack_timesteps(50) == list(range(10, 1000, 20))  # 10, 30, ..., 990
    assert attack_timesteps(5) == [100, 300, 500, 700, 900]
    # the budget scales the judged timesteps, and only them
    cheap = DiscreteAttackConfig.budgeted(0.2, iterations=7)
    assert (cheap.timesteps, cheap.iterations) == (10, 7)
    assert DiscreteAttackConfig.budgeted(0.5, timesteps=10).timesteps == 5


def test_discrete_attack_stays_on_the_simplex_and_decodes_to_real_tokens(tiny_pipe):
    target = torch.randn(1, 4, 16, 16)
    seen = []
    out = discrete_attack(tiny_pipe, "a red circle", target, lambda adv: seen.append(adv) or False,
                          DiscreteAttackConfig(n_tokens=3, timesteps=4, iterations=3, lr=0.5))
    assert not out["success"] and out["checks"] == 4 and out["iterations"] == 12
    assert 1 <= len(seen) <= 4 and len(set(seen)) == len(seen)  # a text is judged once, however often it recurs
    probs = out["probs"]
    assert (probs >= 0).all() and torch.allclose(probs.sum(-1), torch.ones(3))
    assert (probs.max(-1).values > 1.0 / probs.shape[-1]).all()  # it moved away from the uniform start
    special = set(tiny_pipe.tokenizer.all_special_ids)
    assert all(0 <= i < len(tiny_pipe.tokenizer) and i not in special for i in out["token_ids"])
    prefix = out["adversarial_prompt"][: -len("a red circle")].strip()
    assert prefix and out["adversarial_prompt"].endswith("a red circle")
    # the text is what gets replayed: it is the decoding of the chosen vocabulary tokens
    assert tiny_pipe.tokenizer.decode(out["token_ids"], skip_special_tokens=True).strip() == prefix


def test_discrete_attack_stops_at_the_first_judged_success(tiny_pipe):
    target = torch.randn(1, 4, 16, 16)
    calls = []
    out = discrete_attack(tiny_pipe, "a red circle", target, lambda adv: calls.append(adv) or True,
                          DiscreteAttackConfig(n_tokens=2, timesteps=6, iterations=2, lr=0.5))
    assert out["success"] and calls == [out["adversarial_prompt"]]
    assert out["checks"] == 1 and out["iterations"] == 2 and out["timestep"] == attack_timesteps(6)[0]


def test_a_batched_attack_is_each_prompt_attacked_alone(tiny_pipe):
    """Batching prompts changes the speed, not the attack: the same draws, distributions and stops."""
    prompts = ["a red circle", "a blue disk", "a green round shape"]
    targets = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    cfg = DiscreteAttackConfig(n_tokens=2, timesteps=3, iterations=3, lr=0.5)
    winner = {}  # prompt 1 succeeds at its second judged text; the others never do

    def check(rows, texts):
        out = []
        for r, text in zip(rows, texts):
            winner.setdefault(r, []).append(text)
            out.append(r == 1 and len(winner[r]) == 2)
        return out

    batched = discrete_attack_batch(tiny_pipe, prompts, targets, check, cfg)
    assert [b["success"] for b in batched] == [False, True, False]
    for i, prompt in enumerate(prompts):
        calls = []
        alone = discrete_attack(tiny_pipe, prompt, targets[i:i + 1],
                                lambda adv, i=i: calls.append(adv) or (i == 1 and len(calls) == 2), cfg)
        assert calls == winner[i]  # the same texts judged, in the same order
        assert alone["token_ids"] == batched[i]["token_ids"] and alone["checks"] == batched[i]["checks"]
        # float noise of a batched UNet call, through Adam's normalised steps: tiny, never a different token
        d = (alone["probs"] - batched[i]["probs"]).abs()
        assert d.max() < 0.05 * alone["probs"].max() and d.mean() < 1e-6
        assert abs(alone["loss"] - batched[i]["loss"]) < 1e-4


def test_asr_arithmetic_on_a_hand_made_result_set():
    results = [{"pre_success": True, "success": True}, {"pre_success": False, "success": True},
               {"pre_success": False, "success": False}, {"pre_success": False, "success": True}]
    s = asr_summary(results)
    assert s["pre_asr"] == 0.25 and s["asr"] == 0.75 and s["n_attack_success"] == 2


def test_target_rows_and_judges_refuse_what_they_cannot_measure():
    rows = [Row("a red square", expected={"object": "square"}), Row("a blue star", expected={"object": "star"})]
    with pytest.raises(UserError, match="no prompt asking for 'circle'"):
        target_rows(rows, "circle")
    assert [r.prompt for _, r in target_rows(rows + [Row("a disk", expected={"object": "circle"})], "circle")] == ["a disk"]
    assert len(target_rows([Row("p1"), Row("p2")], "nudity")) == 2  # unlabelled sets are all target
    with pytest.raises(UserError, match="no judge knows the concept 'Van Gogh'"):
        world_for("minisd").concept_judge("Van Gogh")


def test_attack_budget_zero_is_a_one_line_error(tmp_path, capsys):
    code = run(["attack", "--model", "minisd", "--concept", "circle", "--suite", "mini-objects", "--budget", "0",
                "--json", str(tmp_path / "a.json")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "0 < --budget <= 1" in err[0]
    assert not (tmp_path / "a.json").exists()


def test_asr_on_minisd_is_judged_by_the_classifier_and_replayable(tmp_path):
    """Base MiniSD draws circles for circle prompts: every prompt is a no-attack success,
    judged by the MiniSD classifier; the JSON records it."""
    rows = [Row("a red circle", expected={"object": "circle"}), Row("a blue disk", expected={"object": "circle"})]
    report = run_attack("minisd", "circle", rows, tmp_path / "asr.json", DiscreteAttackConfig(timesteps=2, iterations=2))
    assert report["summary"]["pre_asr"] == 1.0 and report["summary"]["asr"] == 1.0
    saved = json.loads((tmp_path / "asr.json").read_text())
    assert saved["protocol"]["judge"] == "MiniSD judge: object == circle"
    assert [r["prompt"] for r in saved["per_prompt"]] == ["a red circle", "a blue disk"]


def test_advunlearn_exports_a_text_encoder_that_plugs_into_a_fresh_pipeline(tiny_sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    from test_trainers import make_config, trainer_for
    from transformers import CLIPTextModel

    from erasure.pipelines import ErasedPipeline

    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, steps=2))
    trainer.train(tmp_path / "erasure")
    manifest = json.loads((tmp_path / "erasure" / "erasure_config.json").read_text())
    assert manifest["changed_tensors"] and all(k.startswith("text_encoder.") for k in manifest["changed_tensors"])
    assert run(["export-text-encoder", str(tmp_path / "erasure"), "--out", str(tmp_path / "te")]) == 0
    fresh = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, text_encoder=CLIPTextModel.from_pretrained(tmp_path / "te"),
                                                    safety_checker=None)
    kw = {"num_inference_steps": 3, "output_type": "pt"}
    plugged = fresh("a red circle", generator=torch.Generator().manual_seed(3), **kw).images
    erased = ErasedPipeline.from_pretrained(tmp_path / "erasure")("a red circle", generator=torch.Generator().manual_seed(3),
                                                                  **kw).images
    assert torch.equal(plugged, erased)


def test_advunlearn_layer_subsets_train_only_those_layers(tiny_sd_dir):
    from test_trainers import make_config, trainer_for

    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, layers="0"))
    assert trainer.trainable and all(".layers.0." in k for k in trainer.trainable)
    with pytest.raises(UserError, match="--layers must be 'all' or indices"):
        make_config("advunlearn", tiny_sd_dir, layers="first")


def test_advunlearn_retain_trajectories_are_distinct_prompts_refreshed_on_schedule(tiny_sd_dir):
    from test_trainers import make_config, trainer_for

    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, retain_trajectories=6, refresh_every=2))
    z_r, t_r, ids = trainer.retain_latents(4)
    first = trainer.retain_cache[1]
    assert len(first) == len(set(first.tolist())) == 6 and set(ids.tolist()) <= set(first.tolist())
    assert z_r.shape[0] == t_r.shape[0] == 4
    trainer.step = 1
    trainer.retain_latents(4)
    assert torch.equal(trainer.retain_cache[1], first)  # reused within refresh_every
    trainer.step = 2
    trainer.retain_latents(4)
    assert not torch.equal(trainer.retain_cache[1], first)  # then drawn afresh


def test_vectors_in_the_concepts_place_encode_like_the_concepts_own_words(tiny_pipe):
    """encode_with_slots with the concept word's own token embedding in its place is the plain
    prompt's encoding; encode_with_prefix with the first word's is too: the hook moves nothing else."""
    from erasure.attacks.text import encode_with_prefix, encode_with_slots

    tok, te = tiny_pipe.tokenizer, tiny_pipe.text_encoder
    table = te.get_input_embeddings().weight.detach()
    plain = encode_prompts(tok, te, ["a red circle on grey", "a circle"], "cpu")
    circle = table[tok("circle", add_special_tokens=False).input_ids]
    slotted = encode_with_slots(tok, te, [("a red ", " on grey"), ("a ", "")], circle)
    assert torch.allclose(slotted, plain, atol=1e-5)
    prefixed = encode_with_prefix(tok, te, ["red circle on grey"], table[tok("a", add_special_tokens=False).input_ids])
    assert torch.allclose(prefixed, plain[:1], atol=1e-5)
    other = encode_with_slots(tok, te, [("a red ", " on grey")], table[tok("square", add_special_tokens=False).input_ids])
    assert not torch.allclose(other, plain[:1], atol=1e-3)


@pytest.mark.parametrize("place", ["concept", "both"])
def test_advunlearn_attacks_in_the_concepts_place(place, tiny_sd_dir, tmp_path):
    """--attack-place concept puts the inner attack's vectors where the forget prompt names the
    concept (the slot starts after the prompt's words before it); the run trains and resumes."""
    from test_trainers import make_config, trainer_for

    from erasure.trainers.advunlearn import SLOT_MARK

    trainer = trainer_for(make_config("advunlearn", tiny_sd_dir, steps=2, attack_warmup=0, attack_steps=2,
                                      attack_place=place))
    seen = []
    original = trainer.adversarial_encoder

    def spy(k, where):
        seen.append(where)
        return original(k, where)
    trainer.adversarial_encoder = spy
    trainer.train(tmp_path / "erasure")
    assert (tmp_path / "erasure" / "erasure_config.json").is_file()
    assert set(seen) <= {"prefix", "concept"} and ("concept" in seen if place == "concept" else seen)
    assert SLOT_MARK not in " ".join(trainer.forget_prompt_sets[0])
    concept = trainer.config.concepts[0]
    splits = trainer.concept_splits[0]  # each forget prompt split once, around the concept's words
    named = [p for p, (before, after) in splits.items() if f"{before}{concept}{after}".lower() == p.lower()]
    assert named and all(splits[p] == ("", f" {p}") for p in splits if p not in named)
    with pytest.raises(UserError, match="--attack-place must be prefix, concept or both"):
        make_config("advunlearn", tiny_sd_dir, attack_place="middle")


def test_advunlearn_x_is_advunlearn_on_the_unets_cross_attention_attacked_in_both_places(tiny_sd_dir, tmp_path):
    from test_trainers import make_config, trainer_for

    from erasure.config import EraseConfig
    from erasure.files import load_tensors

    mini = EraseConfig.from_dict({"method": "advunlearn-x", "concept": "circle", "base_model": "minisd"})
    assert (mini.target, mini.attack_place, mini.lr) == ("esd-x", "both", 5e-4)
    quick = {"steps": 2, "attack_warmup": 0, "attack_steps": 2, "retain_batch": 2, "ddim_steps": 4}
    trainer_for(make_config("advunlearn-x", tiny_sd_dir, **quick)).train(tmp_path / "x")
    trainer_for(make_config("advunlearn", tiny_sd_dir, target="esd-x", attack_place="both", **quick)).train(tmp_path / "a")
    x, a = (load_tensors(tmp_path / n / "erasure_model.safetensors") for n in ("x", "a"))
    assert x and all(k.startswith("unet.") and ".attn2." in k for k in x)  # the UNet's cross-attention only
    assert set(x) == set(a) and all(torch.equal(x[k], a[k]) for k in x)


def test_eval_runs_asr_as_a_metric_beside_the_suite(tmp_path):
    out = tmp_path / "r.json"
    assert run(["eval", "--model", "minisd", "--suite", "mini-objects", "--limit", "2", "--images-per-prompt", "1",
                "--metrics", "mini_classifier,asr", "--concept", "circle", "--attack-budget", "0.05",
                "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["summary"]["pre_asr"] == 1.0 and result["summary"]["asr"] == 1.0  # base MiniSD draws circles
    assert result["metrics"]["asr"]["summary"]["n_prompts"] == 2
    assert "erasure_rate" in result["summary"]  # the concept also turns on erasure/retention
    assert run(["eval", "--model", "minisd", "--suite", "mini-objects", "--metrics", "asr", "--json",
                str(tmp_path / "x.json")]) == 2  # asr without a concept: one-line error
