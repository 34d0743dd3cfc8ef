import math

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.errors import UserError
from erasure.eval.metrics.fid import FID, KID, extract_features, feature_stats, frechet_distance, kid, load_inception
from erasure.eval.metrics import get_metric, metric_names
from erasure.worlds.mini.world import COLORS, STYLES, Scene, render, sample_scene

N = 300


def _world(seed: int, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return render(sample_scene(n, g), g)


def _only(kind: int, seed: int, n: int = N) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scene = Scene(objects=torch.full((n,), kind, dtype=torch.long),
                  colors=torch.randint(0, len(COLORS), (n,), generator=g),
                  styles=torch.randint(0, len(STYLES), (n,), generator=g))
    return render(scene, g)


def _run(metric, images):
    return metric.compute(images, [""] * len(images), [{}] * len(images))


# ----------------------------------------------------------------------------- (a) FID-mini / KID-mini on the world

@pytest.fixture(scope="module")
def world_sets():
    return {"a": _world(1), "b": _world(2), "circles": _only(0, 3), "squares": _only(1, 4)}


def test_fid_mini_separates_distributions(world_sets):
    assert {"fid", "kid"} <= set(metric_names())
    same = _run(get_metric("fid", reference=world_sets["b"]), world_sets["a"])
    diff = _run(FID(reference=world_sets["squares"]), world_sets["circles"])
    s, d = same["summary"], diff["summary"]
    assert s["features"] == "mini (MiniSD judge, 128-d)"  # default for 64x64 images
    assert s["n_images"] == N and s["n_reference"] == N and same["per_image"] == []
    assert same["protocol"]["reported_as"] == "FID-mini"
    assert 0 <= s["fid"] and math.isfinite(s["fid"])
    assert d["fid"] > 5 * s["fid"], (s["fid"], d["fid"])


def test_kid_mini_separates_distributions(world_sets):
    kwargs = dict(subsets=20, subset_size=100, seed=0)
    same_metric = KID(reference=world_sets["b"], **kwargs)
    same = _run(same_metric, world_sets["a"])
    diff = _run(KID(reference=world_sets["squares"], **kwargs), world_sets["circles"])
    s, d = same["summary"], diff["summary"]
    assert s["features"] == "mini (MiniSD judge, 128-d)" and same["protocol"]["reported_as"] == "KID-mini"
    assert s["subsets"] == 20 and s["subset_size"] == 100 and 0 < s["kid_std"]
    assert d["kid_mean"] > 5 * max(s["kid_mean"], 0) and d["kid_mean"] > 3 * d["kid_std"]
    assert _run(same_metric, world_sets["a"])["summary"] == s  # seeded; reference features cached


def test_mini_features_are_the_judge_penultimate_layer(world_sets):
    from erasure.judges.minisd import load_judge

    imgs = world_sets["a"][:8]
    f = extract_features(imgs, "mini", batch_size=3)
    with torch.no_grad():
        ref = load_judge("cpu").features(imgs * 2 - 1).mean(dim=(2, 3)).double()
    assert f.shape == (8, 128) and f.dtype == torch.float64
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)


def test_mini_refuses_other_sizes():
    with pytest.raises(UserError, match="64x64"):
        extract_features(torch.rand(2, 3, 32, 32), "mini")


# ----------------------------------------------------------------------------- (b) the maths

def test_frechet_distance_zero_symmetric_and_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(400, 8, generator=g, dtype=torch.float64) * 2 + 1
    mx, sx = feature_stats(x)
    my, sy = feature_stats(y)
    assert abs(frechet_distance(mx, sx, mx, sx)) < 1e-8
    a, b = frechet_distance(mx, sx, my, sy), frechet_distance(my, sy, mx, sx)
    assert a > 1 and abs(a - b) < 1e-9 * a
    # independent route: eigenvalues of S1 S2 are real and positive for SPD matrices
    ev = np.linalg.eigvals(sx.numpy() @ sy.numpy()).real
    expected = float(((mx - my) ** 2).sum() + sx.trace() + sy.trace()) - 2 * np.sqrt(ev).sum()
    assert abs(a - expected) < 1e-8 * a
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(d1) - np.sqrt(d2)) ** 2).sum()
    assert abs(frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) - closed) < 1e-10


def test_frechet_distance_handles_singular_covariances():
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))  # rank-2 covariance in 50-d
    m, s = feature_stats(x)
    assert 0 <= frechet_distance(m, s, m, s) < 1e-6
    with pytest.raises(ValueError):
        frechet_distance(m, s, m[:10], s)


def test_kid_basics():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 16, generator=g), torch.randn(150, 16, generator=g)
    c = torch.randn(150, 16, generator=g) + 1
    same, same_std = kid(a, b, subsets=10, subset_size=1000, seed=0)
    far, _ = kid(a, c, subsets=10, subset_size=1000, seed=0)
    assert far > 10 * abs(same) and same_std >= 0
    assert kid(a, c, subsets=10, subset_size=50, seed=3) == kid(a, c, subsets=10, subset_size=50, seed=3)
    assert kid(a, c, subsets=3, subset_size=1000) == kid(a, c, subsets=3, subset_size=150)  # capped at 150


# ----------------------------------------------------------------------------- (c) the Inception path

@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=True)  # stand-in, random weights, fc kept
    path = tmp_path_factory.mktemp("inception") / "inception_standin.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_inception_features_and_fid(inception_file):
    net, sha = load_inception(inception_file)
    assert len(sha) == 64 and not net.training
    imgs = _world(5, 2)
    f = extract_features(imgs, "inception", inception_weights=inception_file)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    out = _run(FID(reference=_world(6, 2), features="inception", inception_weights=str(inception_file)), imgs)
    assert math.isfinite(out["summary"]["fid"]) and out["summary"]["fid"] >= 0
    assert out["summary"]["features"] == f"inception-v3 pool3 2048-d ({inception_file})"
    assert out["protocol"]["inception_weights_sha256"] == sha


def test_inception_default_for_non_64_images_needs_weights():
    with pytest.raises(UserError, match="inception_weights"):
        _run(FID(reference=torch.rand(2, 3, 32, 32)), torch.rand(2, 3, 32, 32))
    with pytest.raises(UserError, match="no inception weights file"):
        load_inception("/nonexistent/inception.safetensors")


def test_inception_refuses_pickles(tmp_path):
    path = tmp_path / "inception.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="pickle"):
        load_inception(path)


# ----------------------------------------------------------------------------- (d) reference folders

def _save_png(img: torch.Tensor, path) -> None:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def test_reference_folder(tmp_path):
    imgs = _world(7, 20)
    for i, img in enumerate(imgs):
        _save_png(img, tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    quantised = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f"{i:03d}.png"))).permute(2, 0, 1)
                             for i in range(20)]).float() / 255
    out = _run(FID(reference=tmp_path, batch_size=7), quantised)
    assert out["summary"]["n_reference"] == 20 and out["summary"]["fid"] < 1e-6
    assert out["protocol"]["reference"] == str(tmp_path)


def test_reference_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no png/jpg/jpeg/webp"):
        FID(reference=empty)
    with pytest.raises(UserError, match="does not exist"):
        FID(reference=tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i, img in enumerate(_world(8, 3)):
        _save_png(img, bad / f"{i}.png")
    (bad / "1_broken.jpg").write_bytes(b"not really a jpeg")
    (bad / "2_broken.png").write_bytes(b"also broken")
    with pytest.raises(UserError, match="1_broken.jpg"):
        _run(FID(reference=bad), _world(9, 4))


def test_settings_errors():
    with pytest.raises(UserError, match="reference"):
        FID()
    with pytest.raises(UserError, match="unknown features"):
        FID(reference=torch.rand(2, 3, 64, 64), features="clip")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        FID(reference=torch.rand(2, 3, 64, 64) * 2 - 1)
