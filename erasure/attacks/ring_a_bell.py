"""Ring-A-Bell's concept-vector attack (Tsai et al., ICLR 2024): text encoder only, no UNet.

1. Concept vector: over paired prompts (the same scene with and without the concept),

       c = mean_i [ E(p_i with concept) - E(p_i without) ]          (77, D)

   where E is the text encoder's full last_hidden_state (every one of the 77 positions, not
   the pooled vector).
2. Target of a seed prompt p: T = E(p) + eta * c.
3. A gradient-free genetic search over K free token ids (the prompt is BOS, the K tokens, EOS,
   padding) minimises the fitness ||E(ids) - T||^2 over all 77 x D numbers. The reference's
   generation (InversePrompt.ipynb, its `crossover`, `mutation` and main loop):
     * selection: the whole current population is scored and sorted, and the best
       population // 2 survive (the population after breeding is of varying size, ~population);
     * crossover: *every* survivor is kept and, with probability `crossover`, also crossed with
       a partner drawn uniformly from the survivors (itself included) at one cut point drawn
       uniformly over the K free positions; both complementary children join the population
       right after it;
     * mutation: *every* individual of the new population (survivors and children alike), with
       probability `mutation`, gets one random free position set to a random vocabulary token.
       A survivor is therefore not an untouchable elite: it can be mutated and lose its place;
     * the last generation is scored and sorted only; its best individual is the result.
   `generations` counts scored populations (the reference's loop: 3000 scorings, 2999 breedings).
4. The best ids are decoded to text: that text is the adversarial prompt, fed to the erased
   model like any prompt. Decoding and tokenising again can merge tokens differently, so the
   fitness of the text itself is recorded beside the fitness of the ids.

The attack is model-agnostic: it reads the *base* model's text encoder (the attacker's copy of
CLIP), so its prompts are found once per concept and shared by every erasure of that concept.

Paper defaults (`RingABellConfig()`, InversePrompt.ipynb's parameter cell): K = 16 tokens,
eta = 3 (nudity), population 200, 3000 generations, crossover 0.5, mutation 0.25; about
600k text-encoder forwards per prompt. A smaller population or fewer generations is a weaker
attack (the benchmark labels its budget: docs/bench.md).

Where we differ, deliberately (none changes which individuals the search keeps):
  * an individual copied unchanged from the generation before (a survivor that was not mutated)
    keeps its fitness instead of being encoded again: the text encoder is deterministic, and it
    saves about 3/8 of the forwards;
  * free tokens are drawn from every id but 0 and the tokenizer's special tokens: on Stable
    Diffusion's CLIP tokenizer that is the reference's range [1, 49406) exactly, and on a
    tokenizer whose padding is id 0 (SD 2) the padding is never drawn either;
  * the padding after EOS is the tokenizer's own (the reference writes id 49407, which is SD
    1.x's padding), so a candidate is framed like the seed prompt it is compared with;
  * every random draw comes from one seeded generator per seed prompt (the reference mixes
    Python's, NumPy's and torch's global generators), so a run can be repeated;
  * the concept vector is the plain mean over the pairs: the reference encodes each of its 50
    pairs 5 times and drops the 19 copies whose nude prompt gave no nudity on SD
    (Get_Concept_Vector.ipynb), a cleaning step of its own prompt list.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..files import write_json


@dataclass
class RingABellConfig:
    n_tokens: int = 16       # K free tokens (the paper's 77-token variant: 75)
    eta: float = 3.0         # target = E(seed) + eta * concept vector (paper, nudity: 3)
    population: int = 200    # the first population; population // 2 survive each generation
    generations: int = 3000  # scored populations
    crossover: float = 0.5   # probability that a survivor is crossed with a partner (two children)
    mutation: float = 0.25   # probability that an individual gets one random token replaced
    batch_size: int = 256    # text-encoder forwards per batch
    seed: int = 0

    def budgeted(self, budget: float) -> RingABellConfig:
        """The config with its generations scaled by `budget` (at least 1)."""
        from dataclasses import replace
        return replace(self, generations=max(1, int(round(self.generations * budget))))

    def __post_init__(self) -> None:
        from ..errors import UserError
        if self.n_tokens < 1 or self.population < 2 or self.generations < 1:
            raise UserError("Ring-A-Bell needs at least 1 free token, a population of 2 and 1 generation")
        for name in ("crossover", "mutation"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"Ring-A-Bell {name} is a probability in [0, 1] (got {getattr(self, name)})")


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) ids, padded as Stable Diffusion pads them."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_ids(text_encoder, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(B, 77) ids -> (B, 77, D) float32 last hidden states, on the CPU."""
    device = text_encoder.device
    out = [text_encoder(ids[i:i + batch_size].to(device))[0].float().cpu() for i in range(0, len(ids), batch_size)]
    return torch.cat(out)


def concept_vector(tokenizer, text_encoder, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """(77, D): the mean over pairs of E(with concept) - E(without)."""
    with_c = encode_ids(text_encoder, tokenize(tokenizer, [a for a, _ in pairs]))
    without = encode_ids(text_encoder, tokenize(tokenizer, [b for _, b in pairs]))
    return (with_c - without).mean(0)


def free_token_ids(tokenizer) -> torch.Tensor:
    """The ids a free token is drawn from: every vocabulary id but 0 and the special tokens
    (start, end, padding, unknown); Stable Diffusion's tokenizer: 1 ... 49405."""
    special = set(tokenizer.all_special_ids) | {0}
    return torch.tensor([i for i in range(len(tokenizer)) if i not in special])


def _frame(tokenizer, tokens: torch.Tensor) -> torch.Tensor:
    """(P, K) free tokens -> (P, 77) ids: BOS, the tokens, EOS, padding."""
    n, k = tokens.shape
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((n, length), pad, dtype=torch.long)
    ids[:, 0] = tokenizer.bos_token_id
    ids[:, 1:k + 1] = tokens
    ids[:, k + 1] = tokenizer.eos_token_id
    return ids


def next_generation(survivors: torch.Tensor, cfg: RingABellConfig, vocab: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One breeding of the reference: (S, K) survivors, best first -> (population (N, K),
    copy_of (N,)). Each survivor in order, followed, when it is crossed (probability
    `cfg.crossover`), by its two children with a uniform partner at a uniform cut c in [0, K):
    survivor[:c] + partner[c:] and partner[:c] + survivor[c:]. Then every individual is mutated
    with probability `cfg.mutation` (one uniform position, one uniform vocabulary token).
    `copy_of[j]` is the survivor row j still equals unchanged (not mutated), else -1."""
    s, k = survivors.shape
    crossed = torch.rand(s, generator=generator) < cfg.crossover
    partner = survivors[torch.randint(0, s, (s,), generator=generator)]
    cut = torch.randint(0, k, (s, 1), generator=generator)
    tail = torch.arange(k) >= cut                                  # (S, K): the positions after the cut
    first = torch.where(tail, partner, survivors)
    second = torch.where(tail, survivors, partner)
    keep = torch.stack([torch.ones_like(crossed), crossed, crossed], 1)        # (S, 3)
    population = torch.stack([survivors, first, second], 1)[keep].clone()      # row-major: the reference's order
    copy_of = torch.stack([torch.arange(s), torch.full((s,), -1), torch.full((s,), -1)], 1)[keep]
    n = len(population)
    mutated = torch.rand(n, generator=generator) < cfg.mutation
    where = torch.randint(0, k, (n,), generator=generator)
    value = vocab[torch.randint(0, len(vocab), (n,), generator=generator)]
    rows = mutated.nonzero().squeeze(1)
    population[rows, where[rows]] = value[rows]
    copy_of[mutated] = -1
    return population, copy_of


def genetic_search(tokenizer, text_encoder, target: torch.Tensor, cfg: RingABellConfig,
                   generator: torch.Generator) -> dict:
    """Search K token ids whose encoding is closest to `target` (77, D). Returns the best ids of
    the last generation, their fitness (squared distance), the best fitness of each scored
    generation and the size of each scored population."""
    vocab = free_token_ids(tokenizer)
    n_survive = cfg.population // 2

    def fitness(tokens: torch.Tensor) -> torch.Tensor:  # (P, K) -> (P,)
        if not len(tokens):
            return torch.empty(0)
        states = encode_ids(text_encoder, _frame(tokenizer, tokens), cfg.batch_size)
        return (states - target).pow(2).flatten(1).sum(1)

    population = vocab[torch.randint(0, len(vocab), (cfg.population, cfg.n_tokens), generator=generator)]
    scores = fitness(population)
    history, sizes = [], []
    for step in range(cfg.generations):
        order = scores.argsort(stable=True)[:n_survive]  # selection
        survivors, survivor_scores = population[order], scores[order]
        history.append(float(survivor_scores[0]))
        sizes.append(len(population))
        if step == cfg.generations - 1:  # the last generation is scored and sorted only
            break
        population, copy_of = next_generation(survivors, cfg, vocab, generator)  # crossover, mutation
        known = copy_of >= 0
        scores = torch.empty(len(population))
        scores[known] = survivor_scores[copy_of[known]]
        scores[~known] = fitness(population[~known])
    return {"token_ids": survivors[0].tolist(), "fitness": float(survivor_scores[0]), "history": history,
            "population_sizes": sizes}


def ring_a_bell(tokenizer, text_encoder, seed_prompts: list[str], pairs: list[tuple[str, str]],
                cfg: RingABellConfig, parts: Path | None = None, only: set[int] | None = None) -> dict:
    """Attack every seed prompt. Returns {"config", "concept_vector_norm", "n_pairs", "per_prompt":
    [{"prompt", "adversarial_prompt", "token_ids", "fitness", "text_fitness", "seed_fitness",
    "first_generation_fitness"}]}.

    `seed_fitness` is the distance of the seed prompt itself to its target (what the search
    starts to beat); `text_fitness` that of the decoded adversarial text.

    Prompt i's search depends on nothing but its seed prompt, the pairs, `cfg` and i (its
    generator is seeded cfg.seed + i), so prompts can be searched apart: with `parts`, a folder,
    each prompt's result is kept in `parts/NNN.json` as soon as it is found, with the config and
    pairs it was searched under, and read back on the next call with the same prompt, config and
    pairs (a killed search resumes at its prompt), and `only` limits the call to those prompt
    indices (a share of the search for one of several processes; `per_prompt` then holds those)."""
    c = concept_vector(tokenizer, text_encoder, pairs)
    seeds = encode_ids(text_encoder, tokenize(tokenizer, seed_prompts))
    search = {"config": asdict(cfg), "pairs_sha256": hashlib.sha256(json.dumps(pairs).encode()).hexdigest()}
    results = []
    for i, (prompt, e_seed) in enumerate(tqdm(list(zip(seed_prompts, seeds)), desc="Ring-A-Bell search",
                                              dynamic_ncols=True, disable=len(seed_prompts) < 2)):
        if only is not None and i not in only:
            continue
        part = parts / f"{i:03d}.json" if parts is not None else None
        if part is not None and part.is_file():
            kept = json.loads(part.read_text())
            if kept.pop("search", None) == search and kept.get("prompt") == prompt:
                results.append(kept)
                continue
        target = e_seed + cfg.eta * c
        generator = torch.Generator().manual_seed(cfg.seed + i)
        found = genetic_search(tokenizer, text_encoder, target, cfg, generator)
        text = tokenizer.decode(found["token_ids"], skip_special_tokens=True).strip()
        as_text = encode_ids(text_encoder, tokenize(tokenizer, [text]))[0]
        results.append({"prompt": prompt, "adversarial_prompt": text, "token_ids": found["token_ids"],
                        "fitness": found["fitness"], "text_fitness": float((as_text - target).pow(2).sum()),
                        "seed_fitness": float((e_seed - target).pow(2).sum()),
                        "first_generation_fitness": found["history"][0]})
        if part is not None:  # with what it was searched under: a part of another search is never read back
            write_json(part, {**results[-1], "search": search})
    return {"config": asdict(cfg), "concept_vector_norm": float(c.norm()), "n_pairs": len(pairs), "per_prompt": results}
