import random

import pytest
import torch

from erasure.worlds.mini.world import (COLORS, OBJECTS, STYLES, Scene, make_caption, parse_caption, random_caption,
                                       render, sample_scene)


def _batch(seed: int, n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return render(sample_scene(n, g), g)


def test_render_is_deterministic_for_a_seed():
    a, b, c = _batch(7), _batch(7), _batch(8)
    assert a.shape == (24, 3, 64, 64)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_each_attribute_changes_the_pixels():
    base = Scene(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    ref = render(base, torch.Generator().manual_seed(0))
    for field, n in (("objects", len(OBJECTS)), ("colors", len(COLORS)), ("styles", len(STYLES))):
        for k in range(1, n):
            scene = Scene(**{**base.__dict__, field: torch.tensor([k])})
            img = render(scene, torch.Generator().manual_seed(0))
            assert (img - ref).abs().mean() > 0.005, (field, k)


def test_object_covers_a_sensible_area():
    g = torch.Generator().manual_seed(3)
    scene = sample_scene(200, g)
    imgs = render(scene, g)
    background = imgs[:, :, 0, 0]  # corners are always background
    differs = (imgs - background[:, :, None, None]).abs().sum(1) > 0.1
    frac = differs.float().mean(dim=(1, 2))
    assert frac.min() > 0.05 and frac.max() < 0.7


@pytest.mark.parametrize("language", ["en", "fr", "de"])
def test_captions_parse_back_to_their_attributes(language):
    rng = random.Random(language)
    for _ in range(400):
        o, c, s = rng.choice(OBJECTS), rng.choice(COLORS), rng.choice(STYLES)
        caption = make_caption(o, c, s, language, rng)
        assert parse_caption(caption) == {"object": o, "color": c, "style": s}, caption


def test_unsaid_attributes_parse_as_none_and_synonyms_resolve():
    assert parse_caption("a disk") == {"object": "circle", "color": None, "style": None}
    assert parse_caption("a green plus sign") == {"object": "cross", "color": "green", "style": None}
    assert parse_caption("ein Kreuz in Gelb, einfarbig") == {"object": "cross", "color": "yellow", "style": "plain"}
    assert parse_caption("un cœur violet à carreaux") == {"object": "heart", "color": "purple", "style": "checkered"}
    assert parse_caption("a landscape at dusk") == {"object": None, "color": None, "style": None}


def test_training_captions_mix_languages_and_omissions():
    rng = random.Random(0)
    caps = [random_caption(0, 1, 2, rng) for _ in range(500)]
    parsed = [parse_caption(c) for c in caps]
    assert all(p["object"] == "circle" for p in parsed)
    assert any(p["color"] is None for p in parsed) and any(p["style"] is None for p in parsed)
    foreign = sum(("cercle" in c or "disque" in c or "Kreis" in c) for c in caps)
    assert 50 < foreign < 200
