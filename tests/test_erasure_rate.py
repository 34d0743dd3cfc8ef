"""erasure_rate and retention on rendered MiniSD images whose labels we control."""
import pytest
import torch

from erasure.errors import UserError
from erasure.eval.metrics import get_metric
from erasure.worlds.mini.world import COLORS, OBJECTS, STYLES, Scene, render


def renders(objects, colors, styles, seed=0):
    idx = lambda names, pool: torch.tensor([pool.index(n) for n in names])  # noqa: E731
    return render(Scene(idx(objects, OBJECTS), idx(colors, COLORS), idx(styles, STYLES)), torch.Generator().manual_seed(seed))


def test_an_erased_model_drawing_squares_for_circles_scores_full_erasure_and_kept_colours():
    # 4 "circle" prompts answered with red striped squares (erased, colour and style kept),
    # 4 "square" prompts answered with squares, 4 "star" prompts answered with circles (a side effect)
    images = renders(["square"] * 8 + ["circle"] * 4, ["red"] * 12, ["striped"] * 12)
    expected = ([{"object": "circle", "color": "red", "style": "striped"}] * 4
                + [{"object": "square", "color": "red", "style": "striped"}] * 4
                + [{"object": "star", "color": "red", "style": "striped"}] * 4)
    rate = get_metric("erasure_rate", concept="circle").compute(images, [""] * 12, expected)["summary"]
    assert rate["erasure_rate"] == 1.0 and rate["target_shown"] == 0.0 and rate["erasure_rate_n"] == 4
    kept = get_metric("retention", concept="circle").compute(images, [""] * 12, expected)["summary"]
    assert kept["retain_in_domain"] == 0.5 and kept["retain_in_domain_n"] == 8  # squares right, stars wrong
    assert kept["retain_cross_domain"] == 1.0 and kept["retain_cross_domain_n"] == 24


def test_a_model_that_still_draws_the_concept_has_zero_erasure_rate():
    images = renders(["circle"] * 4, ["blue"] * 4, ["plain"] * 4)
    expected = [{"object": "circle", "color": "blue", "style": "plain"}] * 4
    assert get_metric("erasure_rate", concept="a circle").compute(images, [""] * 4, expected)["summary"]["erasure_rate"] == 0.0
    # a colour concept reads the colour attribute
    assert get_metric("erasure_rate", concept="blue").compute(images, [""] * 4, expected)["summary"]["erasure_rate"] == 0.0


@pytest.mark.parametrize("settings, message", [({}, "needs the erased concept: pass --concept"),
                                               ({"concept": "nudity"}, "'nudity' is not one")])
def test_concept_metrics_need_a_minisd_concept(settings, message):
    with pytest.raises(UserError, match=message):
        get_metric("erasure_rate", **settings).check()
