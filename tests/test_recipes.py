"""The papers' per-concept recipes are catalogue data the open world reads (World.concept_recipe),
layered under the user's settings and over the method's own defaults."""
import dataclasses

import pytest

from erasure.config import EraseConfig
from erasure.errors import UserError
from erasure.registry import get_method, method_names
from erasure.worlds.open import OpenWorld, catalogue


def test_every_catalogue_recipe_names_settings_of_its_method():
    names = set(method_names())
    for concept, entry in catalogue().items():
        for method, settings in entry.get("recipes", {}).items():
            specs = [get_method(n) for n in names if n == method or n.split("-")[0] == method]
            assert specs, f"{concept}: recipe for unknown method {method}"
            for spec in specs:
                fields = {f.name for f in dataclasses.fields(spec.config_cls)}
                assert set(settings) <= fields, (concept, method, sorted(set(settings) - fields))


@pytest.mark.parametrize("spelling", ["nudity", "nude", "NSFW", " Naked "])
def test_an_alias_of_nudity_gets_salun_nudity_recipe(spelling):
    cfg = EraseConfig.from_dict({"method": "salun", "concept": spelling, "base_model": "/models/sd-1.4"})
    assert (cfg.alpha, cfg.steps) == (0.1, 100)


def test_user_settings_win_over_the_recipe_and_minisd_keeps_its_own():
    cfg = EraseConfig.from_dict({"method": "salun", "concept": "nude", "alpha": 0.3, "base_model": "/models/sd"})
    assert (cfg.alpha, cfg.steps) == (0.3, 100)
    mini = EraseConfig.from_dict({"method": "salun", "concept": "nude", "base_model": "minisd"})
    assert mini.steps != 100  # MiniSD's measured defaults, not the SD recipe


def test_several_concepts_take_only_the_settings_their_recipes_agree_on():
    world = OpenWorld()
    assert world.concept_recipe("salun", "nudity") == {**world.concept_recipe("salun", "nudity")}
    assert world.concept_recipe("salun", "nudity, a concept nobody listed") == {}
    assert world.concept_recipe("salun", "nudity, nude") == world.concept_recipe("salun", "nudity")


def test_a_recipe_with_an_unknown_setting_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(OpenWorld, "concept_recipe", lambda self, method, concept: {"no_such_setting": 1})
    with pytest.raises(UserError, match="unknown setting.*no_such_setting"):
        EraseConfig.from_dict({"method": "salun", "concept": "nudity", "base_model": "/models/sd"})


def test_esd_u_trains_what_the_compvis_noxattn_branch_trains():
    """CompVis's `noxattn` skips `out.*` (diffusers: conv_norm_out and conv_out), `time_embed`, attn2."""
    from erasure.targets import select_parameters
    from tests.tiny import build_tiny_pipeline
    pipe = build_tiny_pipeline()
    names = set(select_parameters({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, "esd-u"))
    assert names and not any(k.startswith(("unet.conv_norm_out.", "unet.conv_out.", "unet.time_embedding."))
                             or ".attn2." in k for k in names)
    every = {f"unet.{n}" for n, _ in pipe.unet.named_parameters()}
    assert every - names == {k for k in every if k.startswith(("unet.conv_norm_out.", "unet.conv_out.",
                                                                "unet.time_embedding.")) or ".attn2." in k}



def test_an_alias_trains_under_the_catalogue_name_and_word_keeps_the_text():
    world = OpenWorld()
    assert world.concept_prompts("nude", "auto") == ["nudity"]
    assert world.concept_prompts("Vincent van Gogh", "auto") == ["van gogh"]
    assert world.concept_prompts("nude", "word") == ["nude"]
    assert world.concept_prompts("a concept nobody listed", "auto") == ["a concept nobody listed"]
