"""The discrete attack's memory levers (erasure/eval/asr.py): the attack batch, the precision and
UNet gradient checkpointing change what a run costs, never which tokens a prompt's attack finds."""
import pytest
import torch

from erasure.attacks.discrete import DiscreteAttackConfig
from erasure.errors import UserError
from erasure.eval.asr import attack_dtype, run_attack
from erasure.eval.suites import Row

PROMPTS = ["a red circle", "a blue disk", "a green round shape"]
CFG = DiscreteAttackConfig(n_tokens=2, timesteps=3, iterations=2, lr=0.5)
SAMPLING = {"num_inference_steps": 2}


def never(images):
    """A judge that never sees the concept: every prompt is attacked for the whole budget."""
    return [False] * len(images)


def attack(model, **kw):
    rows = [Row(p, expected={"object": "circle"}) for p in PROMPTS]
    return run_attack(model, "circle", rows, None, CFG, sampling=SAMPLING, judge=(never, "never"), **kw)


def test_the_attack_batch_and_checkpointing_leave_every_prompts_attack_as_it_is(tiny_mini_dir):
    """Three prompts in one batched call vs one at a time through a checkpointed UNet: the same
    judged texts, tokens and checks per prompt (the loss within float noise of batched kernels)."""
    together = attack(tiny_mini_dir, attack_batch=3)
    alone = attack(tiny_mini_dir, attack_batch=1, gradient_checkpointing="true")
    assert together["memory"] == {"attack_batch": 3, "dtype": "float32", "gradient_checkpointing": False}
    assert alone["memory"] == {"attack_batch": 1, "dtype": "float32", "gradient_checkpointing": True}
    assert together["settings"] == alone["settings"]  # the levers are not part of what was measured
    for a, b in zip(together["per_prompt"], alone["per_prompt"], strict=True):
        assert a["checks"] == b["checks"] == CFG.timesteps and not a["success"] and not b["success"]
        assert a["token_ids"] == b["token_ids"] and a["adversarial_prompt"] == b["adversarial_prompt"]
        assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)
    assert len({r["adversarial_prompt"] for r in together["per_prompt"]}) == len(PROMPTS)


def test_bfloat16_runs_the_attack_and_auto_keeps_float32_on_a_cpu(tiny_mini_dir):
    assert attack_dtype("auto", torch.device("cpu")) == torch.float32
    assert attack_dtype("auto", torch.device("cuda")) == torch.bfloat16
    report = attack(tiny_mini_dir, attack_batch=2, dtype="bfloat16")
    assert report["settings"]["dtype"] == "bfloat16" and report["memory"]["dtype"] == "bfloat16"
    for r in report["per_prompt"]:
        assert r["checks"] == CFG.timesteps and len(r["token_ids"]) == CFG.n_tokens
        assert torch.isfinite(torch.tensor(r["final_loss"]))


def test_checkpointing_follows_the_unet_size():
    """SD 1.4's UNet (860M parameters, built on the meta device: no memory) is big; the tiny one is not."""
    from diffusers import UNet2DConditionModel
    from tiny import build_tiny_pipeline

    from erasure.memory import is_big

    with torch.device("meta"):
        sd14 = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)  # diffusers' defaults: SD 1.x
    assert sum(p.numel() for p in sd14.parameters()) > 800_000_000 and is_big(sd14)
    assert not is_big(build_tiny_pipeline().unet)


@pytest.mark.parametrize("kw, message", [({"attack_batch": 0}, "--attack-batch >= 1"),
                                         ({"dtype": "float16"}, "unknown attack dtype 'float16'"),
                                         ({"gradient_checkpointing": "maybe"}, "takes auto, true or false")])
def test_bad_memory_settings_are_one_line_errors(kw, message, tiny_mini_dir):
    with pytest.raises(UserError, match=message) as e:
        attack(tiny_mini_dir, **kw)
    assert "\n" not in str(e.value)
