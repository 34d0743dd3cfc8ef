"""The before/after grid of `erasure train`: skipped with --no-grid (grid=False in Python),
sized by the base model's world (Stable Diffusion: 2 prompts x 1 seed; MiniSD: its 6 prompts x
1 seed), and announced with its cost, from one timed UNet call, before it is drawn."""
import re

from PIL import Image

from erasure.cli import run

TRAIN = ["train", "--concept", "circle", "--method", "esd-x-strict", "--steps", "1", "--lr", "1e-3"]
ESTIMATE = re.compile(r"comparison grid: (\d+) images? per model \((\d+) prompts? x (\d+) seeds?\), base and erased, "
                      r"at (\d+) steps: about \d+ (s|min|h) \((\d+) UNet calls of \d+\.\d\d s\)")


def grid_size(rows: int, columns: int, tile: int = 2 * 64, pad: int = 2) -> tuple[int, int]:
    """(width, height) of comparison.png: 64x64 images at scale 2, 170 px of labels, a 20 px header."""
    return 170 + columns * (tile + pad) + pad, 20 + rows * (tile + pad) + pad


def test_no_grid_writes_no_comparison_png(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    assert run([*TRAIN, "--model", str(tiny_sd_dir), "--out", str(out), "--no-grid"]) == 0
    assert {p.name for p in out.iterdir()} == {"erasure_config.json", "erasure_model.safetensors"}
    printed = capsys.readouterr().out
    assert "--no-grid" in printed and not ESTIMATE.search(printed)


def test_python_train_writes_the_grid_only_when_asked(tiny_sd_dir, tmp_path):
    from erasure import train
    settings = dict(concept="circle", method="esd-x-strict", steps=1, lr=1e-3, base_model=str(tiny_sd_dir))
    train(str(tmp_path / "a"), **settings)
    assert not (tmp_path / "a" / "comparison.png").exists()
    train(str(tmp_path / "b"), grid=True, **settings)
    assert (tmp_path / "b" / "comparison.png").exists()


def test_stable_diffusion_grid_is_small_and_prints_its_cost_first(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "erased"
    assert run([*TRAIN, "--model", str(tiny_sd_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    found = ESTIMATE.search(printed)
    assert found, printed
    images, prompts, seeds, steps, _, calls = found.groups()
    assert (int(images), int(prompts), int(seeds)) == (2, 2, 1)
    assert int(calls) == 2 * int(steps)  # base and erased, one batched call per step each
    assert printed.index("comparison grid:") < printed.index("before/after grid:")  # announced before drawing
    # 2 rows (one concept prompt, one unrelated) of 1 + 1 images under a header row
    assert Image.open(out / "comparison.png").size == grid_size(rows=2, columns=2)


def test_minisd_world_grid_keeps_every_prompt(tiny_mini_dir, tmp_path, capsys):
    from erasure.eval.before_after import comparison_plan
    from erasure.worlds import world_for
    prompts, per_prompt = comparison_plan(world_for(tiny_mini_dir), ["circle"])
    assert len(prompts) == 6 and per_prompt == 1
    assert sum("circle" in p for p in prompts) == 2
    out = tmp_path / "erased"
    assert run([*TRAIN, "--model", str(tiny_mini_dir), "--out", str(out)]) == 0
    found = ESTIMATE.search(capsys.readouterr().out)
    assert found and found.groups()[:3] == ("6", "6", "1")
    assert Image.open(out / "comparison.png").size == grid_size(rows=6, columns=2)
