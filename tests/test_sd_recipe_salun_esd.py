"""SalUn's and ESD's Stable Diffusion recipes, as the catalogue gives them to a trainer of the
open world (the tiny random SD): the prompts SalUn draws D_f and D_r from and trains under, and
ESD's variant left to the method the user names."""
import pytest
import torch

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.registry import get_method

NUDE = "a photo of a nude person"
CLOTHED = "a photo of a person wearing clothes"
IMAGENETTE = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck",
              "gas pump", "golf ball", "parachute"]


def salun(base, concept, **settings):
    """A SalUn trainer for `concept` with only what makes it quick set: the recipe decides the rest."""
    config = EraseConfig.from_dict({"method": "salun", "concept": concept, "base_model": str(base), "n_forget": 2,
                                    "n_retain": 2, "batch_size": 1, "data_steps": 2, "checkpoint_every": 0, **settings})
    return get_method("salun").trainer_cls(config)


@pytest.mark.parametrize("spelling", ["nude", "nsfw"])
def test_salun_for_nudity_trains_under_the_reference_prompts(spelling, tiny_sd_dir):
    trainer = salun(tiny_sd_dir, spelling)
    assert (trainer.config.alpha, trainer.config.steps) == (0.1, 100)
    assert trainer.forget_data.prompts == [NUDE]  # D_f is drawn from the reference's prompt ...
    assert trainer.retain_data.prompts == [CLOTHED]  # ... and D_r from its clothed one
    with torch.no_grad():
        nude, clothed = trainer.embed([NUDE]), trainer.embed([CLOTHED])
    torch.testing.assert_close(trainer.c_forget, nude)  # the mask's and the forget loss's condition
    torch.testing.assert_close(trainer.c_anchor, clothed)  # the relabelling target
    torch.testing.assert_close(trainer.c_retain, clothed)  # the retain loss's condition


@pytest.mark.parametrize("concept, anchor", [("church", "French horn"), ("parachute", "tench")])
def test_salun_for_an_object_relabels_imagenette_class_k_as_class_k_plus_one(concept, anchor, tiny_sd_dir):
    trainer = salun(tiny_sd_dir, concept)
    assert trainer.forget_data.prompts == [f"an image of a {concept}"]
    assert trainer.anchor_texts == [f"an image of a {anchor}"]  # parachute, the last class, wraps to the first
    assert trainer.retain_data.prompts == [f"an image of a {c}" for c in IMAGENETTE if c != concept]
    with torch.no_grad():
        torch.testing.assert_close(trainer.c_anchor, trainer.embed([f"an image of a {anchor}"]))


def test_the_users_anchor_and_concept_prompts_win_over_the_recipe(tiny_sd_dir):
    trainer = salun(tiny_sd_dir, "church", anchor="an image of a mosque")
    assert trainer.anchor_texts == ["an image of a mosque"] and trainer.forget_data.prompts == ["an image of a church"]
    trainer = salun(tiny_sd_dir, "nude", concept_prompts="word")
    assert trainer.forget_data.prompts == ["nude"]  # the user's own word, not the recipe's prompt


def test_retain_prompts_that_all_name_the_concept_are_a_one_line_error(tiny_sd_dir):
    with pytest.raises(UserError, match="--retain-prompts: every prompt names a concept this run erases"):
        salun(tiny_sd_dir, "church", retain_prompts="an image of a church | a church at night")


@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
@pytest.mark.parametrize("concept", ["nudity", "van gogh", "church"])
def test_esd_recipes_leave_the_weights_to_the_method_the_user_names(method, concept):
    config = EraseConfig.from_dict({"method": method, "concept": concept, "base_model": "/models/sd-1.4"})
    assert config.target == method
    assert (config.steps, config.lr, config.negative_guidance, config.start_guidance, config.ddim_steps) == \
        (1000, 1e-5, 1.0, 3.0, 50)  # train-esd.py's defaults
