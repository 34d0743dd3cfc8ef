"""The attacks that go around the prompt (inversion, relearning) and the composed robust erasure,
on tiny random models of MiniSD's world: what each saves, what it changes, and what it refuses."""
import json

import pytest
import torch
from safetensors.torch import load_file

from erasure.cli import run


def _attack(model, out, attack, *extra):
    return run(["attack", "--attack", attack, "--model", str(model), "--suite", "mini-objects", "--concept", "circle",
                "--limit", "2", "--json", str(out), *extra])


def test_world_renders_the_concept_and_its_judge_agrees():
    from erasure.judges.minisd import classify
    from erasure.worlds import get_world
    mini = get_world("mini")
    images, captions = mini.concept_images("circle", 12, seed=3)
    assert images.shape == (12, 3, 64, 64)
    assert all(p["object"] == "circle" for p in classify(images))  # ground truth no model made
    assert len(captions) == 12 and all(mini.names_concept(c, "circle") for c in captions)
    again, _ = mini.concept_images("circle", 12, seed=3)
    assert torch.equal(images, again)


def test_with_token_replaces_every_synonym_or_prefixes():
    from erasure.worlds import get_world
    mini = get_world("mini")
    assert mini.with_token("a red disk, plain style", "circle", "<c>") == "a red <c>, plain style"
    assert mini.with_token("a round shape colored red", "circle", "<c>") == "a <c> colored red"
    assert get_world("stable-diffusion").with_token("a photo of a person", "nudity", "<c>") == "<c> a photo of a person"


def test_inversion_trains_one_new_row_that_diffusers_loads(tiny_mini_dir, tmp_path):
    from diffusers import StableDiffusionPipeline
    out = tmp_path / "inv.json"
    assert _attack(tiny_mini_dir, out, "inversion", "--set", "steps=3", "--set", "n_images=4",
                   "--set", "batch_size=2") == 0
    result = json.loads(out.read_text())
    assert all("<concept>" in r["adversarial_prompt"] for r in result["per_prompt"])
    learned = load_file(f"{out}.inversion.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_mini_dir, safety_checker=None)
    start = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    pipe.load_textual_inversion(f"{out}.inversion.safetensors")  # diffusers' own loader
    table = pipe.text_encoder.get_input_embeddings().weight
    token_id = pipe.tokenizer.convert_tokens_to_ids("<concept>")
    assert torch.equal(table[token_id], learned["<concept>"].to(table.dtype))
    assert torch.equal(table[:len(start)], start)  # no other row moved
    init = start[pipe.tokenizer("object", add_special_tokens=False).input_ids[0]]
    assert not torch.equal(learned["<concept>"], init)  # three steps moved it off its initialiser


def test_relearn_judges_each_k_and_saves_what_it_trained(tiny_mini_dir, tmp_path):
    from erasure.files import load_tensors
    out = tmp_path / "rl.json"
    assert _attack(tiny_mini_dir, out, "relearn", "--set", "checkpoints=0,2", "--set", "n_images=4",
                   "--set", "batch_size=2", "--set", "lr=1e-3") == 0
    result = json.loads(out.read_text())
    s = result["summary"]
    assert set(s["asr_by_steps"]) == {"0", "2"} and s["asr_by_steps"]["0"] == s["pre_asr"]
    assert all(set(r["success_by_steps"]) == {"0", "2"} for r in result["per_prompt"])
    trained = load_tensors(f"{out}.relearn.safetensors")
    base = load_tensors(tiny_mini_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(k.startswith("unet.") for k in trained)
    moved = [k for k in trained if not torch.equal(trained[k], base[k.removeprefix("unet.")].to(trained[k].dtype))]
    assert moved  # the fine-tuning changed weights


@pytest.mark.parametrize("extra, message", [
    (["--attack", "relearn", "--set", "params=changed"], "params 'changed' needs an erasure"),
    (["--attack", "relearn", "--set", "params=everything"], "unknown relearn params"),
    (["--attack", "inversion", "--set", "stepz=3"], "has no setting stepz"),
    (["--attack", "inversion", "--budget", "0"], "0 < --budget <= 1"),
    (["--attack", "inversion", "--set", "oops"], "--set takes key=value"),
])
def test_bad_attack_settings_are_one_line(extra, message, tiny_mini_dir, tmp_path, capsys):
    code = run(["attack", "--model", str(tiny_mini_dir), "--suite", "mini-objects", "--concept", "circle",
                "--limit", "1", "--json", str(tmp_path / "a.json"), *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "a.json").exists()


def test_a_rerun_with_the_same_settings_reuses_the_result(tiny_mini_dir, tmp_path):
    out = tmp_path / "rab.json"
    args = ["--set", "population=4", "--set", "generations=2", "--set", "n_tokens=2"]
    assert _attack(tiny_mini_dir, out, "ring-a-bell", *args) == 0
    first = out.read_text()
    assert _attack(tiny_mini_dir, out, "ring-a-bell", *args) == 0
    assert json.loads(out.read_text())["per_prompt"] == json.loads(first)["per_prompt"]


def test_composed_erasure_ships_both_parts_and_loads(tiny_mini_dir, tmp_path):
    from erasure.config import EraseConfig
    from erasure.files import load_tensors
    from erasure.pipelines import ErasedPipeline
    from erasure.registry import get_method
    parts = ("esd-x.steps=2,esd-x.checkpoint_every=0,advunlearn.steps=2,advunlearn.attack_warmup=0,"
             "advunlearn.attack_steps=1,advunlearn.retain_trajectories=1,advunlearn.checkpoint_every=0")
    config = EraseConfig.from_dict({"method": "adv-esd", "concept": "circle", "base_model": str(tiny_mini_dir),
                                    "part_settings": parts})
    out = get_method("adv-esd").trainer_cls(config).train(tmp_path / "e")
    tensors = load_tensors(out / "erasure_model.safetensors")
    esd = load_tensors(out / "parts" / "esd-x" / "erasure_model.safetensors")
    adv = load_tensors(out / "parts" / "advunlearn" / "erasure_model.safetensors")
    assert set(tensors) == set(esd) | {k for k in adv if k.startswith("text_encoder.")}
    assert any(k.startswith("unet.") for k in tensors) and any(k.startswith("text_encoder.") for k in tensors)
    assert all(torch.equal(tensors[k], esd[k]) for k in esd)
    manifest = json.loads((out / "erasure_config.json").read_text())
    assert manifest["method"] == "adv-esd" and set(manifest["parts"]) == {"esd-x", "advunlearn"}
    pipe = ErasedPipeline.from_pretrained(out)  # loads as any erasure (base, keys, shapes, dtypes checked)
    assert pipe is not None


def test_a_composed_run_stopped_in_its_parts_resumes_from_the_command_line(tiny_mini_dir, tmp_path):
    """A killed adv-esd run leaves only OUT/parts/ (a part's checkpoint): `erasure train --resume`
    into the same --out accepts the folder and finishes both parts."""
    from erasure.cli import run
    from erasure.config import EraseConfig
    from erasure.files import load_tensors
    from erasure.registry import get_method
    parts = ("esd-x.steps=2,esd-x.checkpoint_every=1,advunlearn.steps=2,advunlearn.attack_warmup=0,"
             "advunlearn.attack_steps=1,advunlearn.retain_trajectories=1,advunlearn.checkpoint_every=0")
    config = EraseConfig.from_dict({"method": "adv-esd", "concept": "circle", "base_model": str(tiny_mini_dir),
                                    "part_settings": parts})
    out = tmp_path / "e"
    get_method("adv-esd").trainer_cls(config).train(out, stop_after=1)  # the esd-x part stops at step 1
    assert [e.name for e in out.iterdir() if not e.name.startswith(".")] == ["parts"]
    assert (out / "parts" / "esd-x" / "checkpoint" / "state.json").is_file()
    assert run(["train", "--method", "adv-esd", "--model", str(tiny_mini_dir), "--concept", "circle",
                "--part-settings", parts, "--out", str(out), "--resume", "--no-grid"]) == 0
    tensors = load_tensors(out / "erasure_model.safetensors")
    assert any(k.startswith("unet.") for k in tensors) and any(k.startswith("text_encoder.") for k in tensors)
    assert json.loads((out / "parts" / "esd-x" / "erasure_config.json").read_text())["config"]["steps"] == 2


def test_composed_refuses_unknown_part_settings_before_training(tiny_mini_dir):
    from erasure.config import EraseConfig
    from erasure.errors import UserError
    from erasure.registry import get_method
    config = EraseConfig.from_dict({"method": "adv-esd", "concept": "circle", "base_model": str(tiny_mini_dir),
                                    "part_settings": "esd-x.nonsense=1"})
    with pytest.raises(UserError, match="esd-x has no setting nonsense"):
        get_method("adv-esd").trainer_cls(config)
    with pytest.raises(UserError, match="--part-settings takes"):
        EraseConfig.from_dict({"method": "adv-esd", "concept": "circle", "part_settings": "steps=3"})


def test_joint_composition_predicts_with_the_erased_unet_and_targets_from_the_base(tiny_mini_dir):
    from erasure.config import EraseConfig
    from erasure.registry import get_method
    from erasure.trainers.composed import ComposedTrainer
    config = EraseConfig.from_dict({"method": "advunlearn", "concept": "circle", "base_model": str(tiny_mini_dir),
                                    "steps": 1, "attack_warmup": 0, "attack_steps": 1, "retain_trajectories": 1})
    trainer = get_method("advunlearn").trainer_cls(config)
    name, p = next((n, p) for n, p in trainer.unet.named_parameters() if "attn2.to_k" in n)
    base = p.detach().clone()
    ComposedTrainer.put_unet_part(trainer, {f"unet.{name}": base + 1})
    assert trainer.frozen_unet is not trainer.unet
    assert torch.equal(dict(trainer.unet.named_parameters())[name], base + 1)
    assert torch.equal(dict(trainer.frozen_unet.named_parameters())[name], base)
