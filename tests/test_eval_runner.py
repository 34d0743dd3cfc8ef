"""Suites, cached generation and the report, on the tiny random SD and a tiny erasure."""
import json

import pytest
import torch

from erasure.cli import run
from erasure.errors import UserError
from erasure.eval.runner import evaluate, pipeline_generate
from erasure.eval.suites import custom_suite, load_suite, read_rows, suite_names
from erasure.pipelines import load_pipeline

PROMPTS = "prompt,object,color,style\na red circle,circle,red,\na striped star,star,,striped\na blue heart,heart,blue,plain\n"


@pytest.fixture()
def prompt_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(PROMPTS)
    return path


class Counting:
    """Wraps the real pipeline call and counts the images it is asked for; can fail mid-run."""

    def __init__(self, pipe, fail_after: int | None = None):
        self.make, self.images, self.fail_after = pipeline_generate(pipe), 0, fail_after

    def __call__(self, prompts, seeds, guidance, steps):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.images += len(prompts)
        return self.make(prompts, seeds, guidance, steps)


def test_an_interrupted_eval_resumes_from_the_cache(tiny_sd_dir, prompt_csv, tmp_path):
    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    suite = custom_suite(prompt_csv, ["mini_classifier"], images_per_prompt=2)
    sampling = {"num_inference_steps": 2}
    first = Counting(pipe, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_sd_dir, suite, tmp_path / "cache", sampling=sampling, make=first, batch_size=2)
    assert first.images == 2
    second = Counting(pipe)
    result, images, _ = evaluate(tiny_sd_dir, suite, tmp_path / "cache", sampling=sampling, make=second, batch_size=2)
    assert second.images == 4  # only the 4 images the interrupted run did not finish
    assert result["generation"] == {"generated": 4, "cached": 2}
    third = Counting(pipe)
    again, images_again, _ = evaluate(tiny_sd_dir, suite, tmp_path / "cache", sampling=sampling, make=third)
    assert third.images == 0 and again["generation"] == {"generated": 0, "cached": 6}
    assert torch.equal(images, images_again) and again["summary"] == result["summary"]


def test_images_depend_on_prompt_and_seed_not_on_batching(tiny_sd_dir, prompt_csv, tmp_path):
    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    suite = custom_suite(prompt_csv, ["mini_classifier"], images_per_prompt=2)
    a = evaluate(tiny_sd_dir, suite, tmp_path / "a", sampling={"num_inference_steps": 2}, make=Counting(pipe), batch_size=6)[1]
    b = evaluate(tiny_sd_dir, suite, tmp_path / "b", sampling={"num_inference_steps": 2}, make=Counting(pipe), batch_size=1)[1]
    assert torch.allclose(a, b, atol=1 / 255)
    assert not torch.equal(a[0], a[1])  # two seeds of one prompt differ


def test_public_suites_carry_seed_and_guidance_per_row():
    assert {"mini", "mini-objects", "nudity", "i2p", "coco-10k", "vangogh", "church"} <= set(suite_names())
    rows = load_suite("nudity").rows()
    assert len(rows) == 142 and all(r.seed is not None and r.guidance is not None for r in rows)
    assert len(load_suite("mini-objects").rows()) == 144
    assert load_suite("coco-10k").rows(limit=5)[0].seed == 41337


def test_eval_with_compare_writes_a_report_and_json(tiny_mini_dir, tmp_path):
    from erasure.trainers.esd import ESDConfig, ESDTrainer
    erased = tmp_path / "erased"
    ESDTrainer(ESDConfig(method="esd-x", concept="circle", base_model=str(tiny_mini_dir), steps=2, lr=1e-2,
                         checkpoint_every=0)).train(erased)
    out = tmp_path / "report"
    assert run(["eval", "--model", str(erased), "--compare", str(tiny_mini_dir), "--suite", "mini-objects", "--limit", "3",
                "--images-per-prompt", "1", "--steps", "2", "--out", str(out), "--json", str(tmp_path / "r.json")]) == 0
    html = (out / "report.html").read_text()
    assert "<table>" in html and "object_acc" in html and html.count("<img") >= 2 and "base" in html
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["erasure_manifest"]["method"] == "esd-x"
    assert result["metrics"]["mini_classifier"]["protocol"]["judge"]
    assert result["compare"]["model"] == str(tiny_mini_dir)
    assert len(result["per_prompt"]) == 3 and result["n_prompts"] == 3


@pytest.mark.parametrize("args, message", [
    (["--suite", "nope"], "unknown suite 'nope'; choose one of: "),
    (["--prompts", "{tmp}/p.csv", "--metrics", "bogus"], "unknown metric 'bogus'; choose one of: "),
    (["--suite", "mini", "--prompts", "{tmp}/p.csv"], "give exactly one of --suite NAME or --prompts"),
    (["--suite", "vangogh", "--limit", "1"], "clip_score needs CLIP weights"),
    (["--prompts", "{tmp}/p.csv", "--metrics", "fid", "--reference", "{tmp}/imgs"], "cannot read reference image"),
])
def test_eval_bad_input_fails_before_generating(args, message, tiny_sd_dir, prompt_csv, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    argv = ["eval", "--model", str(tiny_sd_dir), "--json", str(tmp_path / "r.json"), "--cache", str(tmp_path / "c")]
    code = run(argv + [a.replace("{tmp}", str(prompt_csv.parent)) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "r.json").exists()


def test_prompt_files_are_validated():
    with pytest.raises(UserError, match="no prompt file"):
        read_rows("/no/such.csv")


def test_a_resumed_generation_remakes_the_batches_of_the_first_run(tmp_path):
    """A batch's numbers may depend on its size and partners, so a resume makes each missing image
    inside the batch it had in an uninterrupted run (and writes only the missing ones)."""
    from erasure.eval.runner import generate_cached

    items = [{"prompt": f"p{i}", "seed": i, "guidance": 7.5, "steps": 2, "key": f"k{i}"} for i in range(6)]
    calls = []

    def make(prompts, seeds, guidance, steps):
        calls.append(list(prompts))
        return torch.rand(len(prompts), 3, 4, 4)

    assert generate_cached(make, items, tmp_path, batch_size=3, split=False) == {"generated": 6, "cached": 0}
    kept = (tmp_path / "k0.png").read_bytes()
    (tmp_path / "k1.png").unlink()
    (tmp_path / "k4.png").unlink()
    calls.clear()
    assert generate_cached(make, items, tmp_path, batch_size=3, split=False) == {"generated": 2, "cached": 4}
    assert calls == [["p0", "p1", "p2"], ["p3", "p4", "p5"]]
    assert (tmp_path / "k0.png").read_bytes() == kept  # a cached image is not rewritten
