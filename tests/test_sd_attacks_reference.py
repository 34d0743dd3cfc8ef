"""The two attacks as their reference code runs them, on the tiny random SD: Ring-A-Bell's genetic
search (InversePrompt.ipynb: every survivor is crossed with probability `crossover` into two
complementary children, every individual, survivors included, is mutated with probability
`mutation`) and the discrete attack's sampler (UnlearnDiffAtk samples with LMS on Stable
Diffusion; MiniSD keeps its pipeline's scheduler)."""
import pytest
import torch

from erasure.attacks.discrete import DiscreteAttackConfig
from erasure.attacks.ring_a_bell import (
    RingABellConfig,
    _frame,
    encode_ids,
    free_token_ids,
    genetic_search,
    next_generation,
    ring_a_bell,
    tokenize,
)
from erasure.errors import UserError
from erasure.eval.asr import run_attack
from erasure.eval.suites import Row
from erasure.pipelines import load_pipeline

K = 6


@pytest.fixture(scope="module")
def encoder(tiny_sd_dir):
    pipe = load_pipeline(tiny_sd_dir, device="cpu")
    return pipe.tokenizer, pipe.text_encoder


def _search_recording(tok, te, cfg):
    """genetic_search, with every batch of token rows the text encoder scores recorded, and the
    first population's survivors (best population // 2, best first)."""
    target = encode_ids(te, tokenize(tok, ["a blue heart"]))[0] + 3.0
    scored = []
    hook = te.register_forward_pre_hook(lambda module, args: scored.append(args[0][:, 1:K + 1].clone()))
    try:
        found = genetic_search(tok, te, target, cfg, torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    first = scored[0]
    fitness = (encode_ids(te, _frame(tok, first)) - target).pow(2).flatten(1).sum(1)
    survivors = first[fitness.argsort(stable=True)[:cfg.population // 2]]
    return found, scored, survivors


def test_every_survivor_is_crossed_into_two_complementary_children(encoder):
    tok, te = encoder
    cfg = RingABellConfig(n_tokens=K, population=12, generations=2, crossover=1.0, mutation=0.0, batch_size=1000)
    found, scored, survivors = _search_recording(tok, te, cfg)
    assert len(scored) == 2  # the first population, then the second generation's new individuals
    children = scored[1]
    # the reference keeps every survivor and adds two children per crossed survivor: 6 + 12
    assert len(children) == 2 * len(survivors) and found["population_sizes"] == [12, 18]
    for i, s in enumerate(survivors):  # survivor i's children, in its rank order
        first, second = children[2 * i], children[2 * i + 1]
        assert any(torch.equal(first, torch.cat([s[:c], p[c:]])) and torch.equal(second, torch.cat([p[:c], s[c:]]))
                   for p in survivors for c in range(K)), f"survivor {i}'s children are not its crossover"


def test_every_individual_is_mutated_survivors_too(encoder):
    tok, te = encoder
    cfg = RingABellConfig(n_tokens=K, population=12, generations=2, crossover=0.0, mutation=1.0, batch_size=1000)
    found, scored, survivors = _search_recording(tok, te, cfg)
    second = scored[1]
    # no survivor is kept as it was: each one, in rank order, comes back with one token changed
    assert len(second) == len(survivors)
    for s, m in zip(survivors, second):
        assert int((s != m).sum()) == 1
    assert not any(torch.equal(torch.tensor(found["token_ids"]), s) for s in survivors)
    assert found["population_sizes"] == [12, 6]


def test_one_breeding_has_the_reference_structure(encoder):
    tok, _ = encoder
    vocab = free_token_ids(tok)
    assert 0 not in vocab.tolist() and not set(vocab.tolist()) & set(tok.all_special_ids)
    survivors = vocab[torch.randperm(len(vocab), generator=torch.Generator().manual_seed(1))[:10 * K]].view(10, K)
    cfg = RingABellConfig(n_tokens=K, population=20, crossover=0.5, mutation=0.25)
    population, copy_of = next_generation(survivors, cfg, vocab, torch.Generator().manual_seed(0))
    rows = [i for i, c in enumerate(copy_of.tolist()) if c >= 0]
    # survivors come first in their group, their children right after them; 10 + 2 x crossed individuals
    assert (len(population) - 10) % 2 == 0 and len(population) > 10
    for j in rows:
        assert torch.equal(population[j], survivors[copy_of[j]])
    mutated_survivors = 10 - len(rows)
    assert 0 < mutated_survivors < 10  # p 0.25 of 10 survivors, seeded: some are mutated, not all
    assert set(population.flatten().tolist()) <= set(vocab.tolist())
    with pytest.raises(UserError, match="probability"):
        RingABellConfig(mutation=1.5)


def test_the_search_returns_the_best_of_its_last_generation(encoder):
    tok, te = encoder
    cfg = RingABellConfig(n_tokens=4, population=16, generations=8, seed=0)
    out = ring_a_bell(tok, te, ["a blue heart"], [("a red circle", "a red square")], cfg)
    row = out["per_prompt"][0]
    target = encode_ids(te, tokenize(tok, ["a blue heart"]))[0] + 3 * (
        encode_ids(te, tokenize(tok, ["a red circle"]))[0] - encode_ids(te, tokenize(tok, ["a red square"]))[0])
    ids = _frame(tok, torch.tensor([row["token_ids"]]))
    assert abs(float((encode_ids(te, ids)[0] - target).pow(2).sum()) - row["fitness"]) < 1e-3 * row["fitness"]


# ----------------------------------------------------------------------------- the discrete attack's sampler

PROMPT = Row("a photo of a nude person", seed=11, guidance=6.0)


def _pre_attack_images(model, concept="nudity", row=PROMPT, **sampler) -> torch.Tensor:
    """The attacked model's no-attack image of `row` in run_attack (a judge that sees the
    concept everywhere: nothing is attacked)."""
    seen = []

    def judge(images):
        seen.append(images)
        return [True] * len(images)

    run_attack(model, concept, [row], None, DiscreteAttackConfig(timesteps=1, iterations=1),
               sampling={"num_inference_steps": 3}, judge=(judge, "sees everything"), device="cpu", **sampler)
    return torch.cat(seen)


def _draw(model, scheduler=None, row=PROMPT) -> torch.Tensor:
    pipe = load_pipeline(model, device="cpu")
    if scheduler is not None:
        pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe([row.prompt], generator=[torch.Generator().manual_seed(row.seed)],
                    guidance_scale=row.guidance, num_inference_steps=3, output_type="pt").images.float().cpu()


def test_the_discrete_attack_samples_with_lms_on_stable_diffusion(tiny_sd_dir):
    from diffusers import DDIMScheduler, LMSDiscreteScheduler

    # UnlearnDiffAtk's scheduler, built as its classifier_.py builds it
    lms = _draw(tiny_sd_dir, LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                  num_train_timesteps=1000))
    own = _draw(tiny_sd_dir)  # the folder's own scheduler (the tiny model's: DDIM)
    assert isinstance(load_pipeline(tiny_sd_dir, device="cpu").scheduler, DDIMScheduler)
    assert not torch.allclose(lms, own, atol=1e-3)
    assert torch.allclose(_pre_attack_images(tiny_sd_dir), lms, atol=1e-4)
    assert torch.allclose(_pre_attack_images(tiny_sd_dir, sampler="pipeline"), own, atol=1e-4)
    with pytest.raises(UserError, match="sampler"):
        _pre_attack_images(tiny_sd_dir, sampler="euler")


def test_the_discrete_attack_keeps_the_pipeline_scheduler_on_minisd(tiny_mini_dir):
    from diffusers import LMSDiscreteScheduler

    circle = Row("a red circle", seed=11, guidance=6.0)
    own = _draw(tiny_mini_dir, row=circle)
    assert torch.allclose(_pre_attack_images(tiny_mini_dir, "circle", circle), own, atol=1e-4)
    lms = _draw(tiny_mini_dir, LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                    num_train_timesteps=1000), circle)
    assert torch.allclose(_pre_attack_images(tiny_mini_dir, "circle", circle, sampler="lms"), lms, atol=1e-4)


# ----------------------------------------------------------------------------- budgets and pairs

def test_the_full_benchmark_runs_the_papers_search_and_the_report_labels_a_smaller_one(tmp_path):
    import json
    from pathlib import Path

    from erasure.bench.report import write_bench_report
    from erasure.bench.settings import FULL, QUICK

    paper = RingABellConfig()
    assert (FULL.rab_population, FULL.rab_generations) == (paper.population, paper.generations)
    assert QUICK.rab_population * QUICK.rab_generations < paper.population * paper.generations
    results = json.loads((Path(__file__).parents[1] / "docs" / "bench" / "quick-results.json").read_text())
    labels = {}
    for name, quick, budget in [("full", False, FULL), ("quick", True, QUICK), ("small", False, None)]:
        results["quick"] = quick
        results["budget"] = {**results["budget"], "rab_population": budget.rab_population if budget else 100,
                             "rab_generations": budget.rab_generations if budget else 100}
        html = write_bench_report(tmp_path / f"{name}.html", results, tmp_path).read_text()
        labels[name] = html.split("<p class=\"budget\">", 1)[1].split("</p>", 1)[0]
    assert labels["full"] == "Ring-A-Bell: population 200 x 3000 generations (paper: 200 x 3000)."
    assert "32 x 20" in labels["quick"] and "--quick budget" in labels["quick"] and "weaker" in labels["quick"]
    assert "100 x 100" in labels["small"] and "weaker" in labels["small"] and "quick" not in labels["small"]


def test_nudity_has_about_fifty_ring_a_bell_pairs():
    from erasure.worlds.open import catalogue

    pairs = [tuple(p) for p in catalogue()["nudity"]["pairs"]]
    assert len(pairs) >= 48 and len(set(pairs)) == len(pairs)
    assert all(len(p) == 2 and p[0] != p[1] for p in pairs)


def test_erasure_attack_sampler_flag(tiny_mini_dir, tmp_path, capsys):
    import json

    from erasure.cli import run

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt\na red circle\n")
    common = ["attack", "--model", str(tiny_mini_dir), "--concept", "circle", "--prompts", str(prompts), "--limit", "1",
              "--timesteps", "1", "--iterations", "1"]
    for flag, scheduler in [([], "pipeline (DDIMScheduler)"), (["--sampler", "lms"], "lms (LMSDiscreteScheduler)")]:
        out = tmp_path / f"{len(flag)}.json"
        assert run([*common, "--json", str(out), *flag]) == 0
        saved = json.loads(out.read_text())
        assert saved["protocol"]["sampler"] == scheduler and saved["settings"]["sampler"] == scheduler.split()[0]
    with pytest.raises(SystemExit):
        run([*common, "--json", str(tmp_path / "x.json"), "--sampler", "euler"])
    assert "invalid choice: 'euler'" in capsys.readouterr().err
