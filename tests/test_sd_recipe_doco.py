"""DoCo's Stable Diffusion recipe as the official code (yongliang-wu/DoCo) runs it: the effective
learning rate, the clip-then-correct gradient of --gradient_clip, caption pairs with the concept
swapped in, and the PatchGAN of gan.py; MiniSD keeps its own measured recipe."""
import re

import pytest
import torch
from test_trainers import make_config, trainer_for

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.prompt_files import SHIPPED_PROMPTS
from erasure.trainers.doco import (
    PatchDiscriminator,
    concept_preserving_gradient,
    disc_layout_for,
    read_captions,
)

SD = "/models/stable-diffusion-v1-4"  # any folder without erasure_world.json is Stable Diffusion's world
CHEAP = {"n_anchor": 2, "batch_size": 2, "data_steps": 2, "disc_warmup": 1, "steps": 2, "checkpoint_every": 0}


def test_sd_defaults_are_the_reference_readme_and_minisd_keeps_its_own():
    sd = EraseConfig.from_dict({"method": "doco", "concept": "a dog", "base_model": SD})
    # --learning_rate 6e-6 with --scale_lr: x batch 8 x accumulation 1 x 1 process, applied as is
    assert sd.lr == pytest.approx(6e-6 * sd.batch_size * sd.grad_accum) and sd.batch_size == 8
    assert (sd.steps, sd.disc_warmup, sd.projection, sd.n_anchor) == (2000, 1000, "reference", 1000)
    assert (sd.data_guidance, sd.data_steps) == (6.0, 25)
    mini = EraseConfig.from_dict({"method": "doco", "concept": "circle", "base_model": "minisd"})
    assert (mini.lr, mini.projection, mini.retain_weight, mini.retain_batch) == (1e-3, "full", 3.0, "shared")


@pytest.mark.parametrize("concept, disc_lr, pairing", [("nudity", 1e-4, "swap"), ("Van Gogh", 5e-4, "style"),
                                                       ("church", 1e-4, "swap"), ("parachute", 1e-4, "swap")])
def test_discriminator_lr_and_pairing_per_concept_type(concept, disc_lr, pairing):
    cfg = EraseConfig.from_dict({"method": "doco", "concept": concept, "base_model": SD})
    assert (cfg.disc_lr, cfg.pairing) == (disc_lr, pairing)
    assert read_captions(cfg.captions)  # the recipe's caption set ships with the package


def test_reference_projection_is_clip_then_g_adv_minus_cos_unit_g_ret():
    # two tensors; g_adv has global norm 5 and g_ret sqrt(6): both are clipped to norm 1 first
    g_adv = [torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])]
    g_ret = [torch.tensor([-1.0, 1.0]), torch.tensor([0.0, 2.0])]
    out = concept_preserving_gradient(g_adv, g_ret, "reference", retain_weight=1.0)
    # tensor 1: clipped g_adv (0.6, 0); cos with g_ret = -1/sqrt(2) < 0, so subtract cos x (-1, 1)/sqrt(2)
    assert torch.allclose(out[0], torch.tensor([0.6 - 0.5, 0.5]), atol=1e-6)
    # tensor 2: cos = 1, no conflict: the clipped g_adv alone (no retention gradient is added)
    assert torch.allclose(out[1], torch.tensor([0.0, 0.8]), atol=1e-6)
    # the full projection keeps the paper's rule and adds retain_weight x g_ret, unclipped
    full = concept_preserving_gradient(g_adv, g_ret, "full", retain_weight=1.0)
    assert torch.allclose(full[0], torch.tensor([1.5, 1.5]) + torch.tensor([-1.0, 1.0]))


def test_the_trainer_steps_on_the_clipped_corrected_adversarial_gradient(tiny_sd_dir):
    trainer = trainer_for(make_config("doco", tiny_sd_dir, disc_warmup=0))
    assert trainer.config.projection == "reference"
    trainer.compute_loss()
    g_adv, g_ret = [g.clone() for g in trainer.adv_grads], [g.clone() for g in trainer.ret_grads]
    trainer.before_optimizer_step()

    def clipped(grads):
        total = torch.sqrt(sum((g * g).sum() for g in grads))
        return [g * min(1.0, 1.0 / (float(total) + 1e-6)) for g in grads]
    for p, a, r in zip(trainer.trainable.values(), clipped(g_adv), clipped(g_ret)):
        unit_r = r / (r.norm() + 1e-8)
        cos = float((a / (a.norm() + 1e-8) * unit_r).sum())
        expected = a - cos * unit_r if cos < 0 else a
        assert torch.allclose(p.grad, expected, atol=1e-7, rtol=1e-5)
    assert trainer.adv_grads is None  # consumed: the next step starts afresh


def test_retention_draws_its_own_batch_on_stable_diffusion(tiny_sd_dir):
    trainer = trainer_for(make_config("doco", tiny_sd_dir, disc_warmup=0))
    state = trainer.generator.get_state()
    _, logs = trainer.compute_loss()
    trainer.generator.set_state(state)  # replay: the adversarial batch's draws, then a fresh retention batch
    x0, _ = trainer.draw_batch(trainer.anchor_data, 2)
    trainer.noised(x0)
    with torch.no_grad():
        expected = trainer.denoising_loss(trainer.anchor_data, trainer.c_anchor, 2)
    assert logs["retain"] == pytest.approx(float(expected), rel=1e-5)


def test_forget_prompts_are_the_anchor_captions_with_the_concept_swapped_in(tiny_sd_dir):
    trainer = trainer_for(make_config("doco", tiny_sd_dir, concept="church", anchor="house",
                                      captions="doco_objects.txt"))
    anchors, (forget,) = trainer.pairs
    captions = (SHIPPED_PROMPTS / "doco_objects.txt").read_text().splitlines()
    assert anchors == [c.replace("{anchor}", "house") for c in captions]
    assert forget == [c.replace("{anchor}", "church") for c in captions]
    assert forget == [re.sub(r"\bhouse\b", "church", a) for a in anchors]  # the only difference in each pair
    assert trainer.anchor_data.prompts == anchors  # the anchor images are drawn from the anchor captions
    for i in (0, 7):  # row i of the embeddings is pair i
        assert torch.allclose(trainer.c_anchor[i], trainer.embed([anchors[i]])[0])
        assert torch.allclose(trainer.c_forget[i], trainer.embed([forget[i]])[0])


def test_nudity_recipe_swaps_clothed_for_nudity_and_an_article_follows_the_word(tiny_sd_dir):
    trainer = trainer_for(EraseConfig.from_dict({"method": "doco", "concept": "nudity", "base_model": str(tiny_sd_dir),
                                                 **CHEAP}))
    anchors, (forget,) = trainer.pairs
    assert len(anchors) == 200 and all("clothed" in a for a in anchors)
    assert forget == [a.replace("clothed", "nudity") for a in anchors]
    plane = trainer_for(make_config("doco", tiny_sd_dir, concept="parachute", anchor="airplane",
                                    captions="doco_objects.txt"))
    assert plane.pairs[0][0] == "a photo of an airplane" and plane.pairs[1][0][0] == "a photo of a parachute"


def test_style_pairs_put_the_concept_in_the_reference_phrasings_drawn_one_to_two(tiny_sd_dir):
    trainer = trainer_for(EraseConfig.from_dict({"method": "doco", "concept": "van gogh", "base_model": str(tiny_sd_dir),
                                                 **CHEAP}))
    anchors, (first, second) = trainer.pairs
    assert first == [f"{a}, in the style of van gogh" for a in anchors]
    assert second == [f"in van gogh's style, {a}" for a in anchors]
    ids = torch.zeros(600, dtype=torch.long)
    drawn = trainer.forget_conditions(ids)
    is_first = [torch.equal(d, trainer.c_forget_forms[0, 0]) for d in drawn]
    assert all(f or torch.equal(d, trainer.c_forget_forms[1, 0]) for d, f in zip(drawn, is_first))
    assert 0.25 < sum(is_first) / len(is_first) < 0.42  # the reference: r in {0, 1, 2}, r == 0 the first form


def test_a_caption_without_the_anchor_is_a_one_line_error(tiny_sd_dir, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("a house by the sea\na boat at sunset\n")
    with pytest.raises(UserError, match=r"caption 2 \('a boat at sunset'\) does not name the anchor 'house'"):
        trainer_for(make_config("doco", tiny_sd_dir, concept="church", anchor="house", captions=str(captions)))
    with pytest.raises(UserError, match="--captions and --concept-prompts both say"):
        make_config("doco", tiny_sd_dir, captions=str(captions), concept_prompts="word")


def test_reference_patchgan_gives_a_3x3_map_on_a_64x64_latent():
    disc = PatchDiscriminator(4, layout="reference")
    assert disc(torch.randn(2, 4, 64, 64)).shape == (2, 1, 3, 3)
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [(c.kernel_size, c.stride, c.padding) for c in convs] == [((4, 4), (2, 2), (1, 1))] * 4 + [((4, 4), (1, 1), (1, 1))]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in disc.modules()) == 3  # none after the first conv
    assert {m.negative_slope for m in disc.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.2}
    assert PatchDiscriminator(4, layout="compact")(torch.randn(2, 4, 16, 16)).shape == (2, 1, 2, 2)
    assert (disc_layout_for("auto", 64), disc_layout_for("auto", 16)) == ("reference", "compact")
    with pytest.raises(UserError, match="--disc-layout reference needs latents at least 32 wide"):
        disc_layout_for("reference", 16)


def test_a_64x64_latent_model_trains_against_the_reference_patchgan(tmp_path):
    from tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    pipe.unet.register_to_config(sample_size=64)  # the pipeline samples 64x64 latents, as SD 1.x at 512 px
    pipe.save_pretrained(tmp_path / "sd64", safe_serialization=True)
    trainer = trainer_for(make_config("doco", tmp_path / "sd64", **CHEAP))
    assert trainer.anchor_data.latents.shape[-2:] == (64, 64) and trainer.disc_layout == "reference"
    trainer.train(tmp_path / "out")
    assert (tmp_path / "out").exists()
