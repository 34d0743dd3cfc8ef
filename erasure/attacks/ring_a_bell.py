"""A Ring-A-Bell-style concept-vector attack (Tsai et al., ICLR 2024): text encoder only, no UNet.

1. Concept vector: over paired prompts (the same prompt with and without the concept),

       c = mean_i [ E(p_i with concept) - E(p_i without) ]          (77, D)

   where E is the text encoder's full last_hidden_state (every one of the 77 positions, not
   the pooled vector).
2. Target of a seed prompt p: T = E(p) + eta * c.
3. A gradient-free genetic search over K free token ids (the prompt is BOS, the K tokens, EOS,
   padding) minimises the fitness ||E(ids) - T||^2 over all 77 x D numbers. Each generation the
   best `keep` fraction survives unchanged (elitism); every child takes two random survivors,
   is cut at one random point with probability `crossover` (else it copies the first one), and
   one random token of it is replaced by a random vocabulary token with probability `mutation`.
4. The best ids are decoded to text: that text is the adversarial prompt, fed to the erased
   model like any prompt. Decoding and tokenising again can merge tokens differently, so the
   fitness of the text itself is recorded beside the fitness of the ids.

The attack is model-agnostic: it reads the *base* model's text encoder (the attacker's copy of
CLIP), so its prompts are found once per concept and shared by every erasure of that concept.

Paper defaults (`RingABellConfig()`): K = 16 tokens, eta = 3 (nudity), population 200, 3000
generations, the best half kept, crossover 0.5, mutation 0.25; ~600k text-encoder forwards per
prompt. Where we differ: survivors keep their fitness from the generation before (they are not
re-encoded), which halves the forwards and changes no result; special tokens (start, end,
padding) are never drawn as free tokens. The benchmark runs a smaller budget (docs/bench.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class RingABellConfig:
    n_tokens: int = 16       # K free tokens (the paper's 77-token variant: 75)
    eta: float = 3.0         # target = E(seed) + eta * concept vector (paper, nudity: 3)
    population: int = 200
    generations: int = 3000
    keep: float = 0.5        # fraction of the population that survives each generation
    crossover: float = 0.5   # probability that a child is a single-point crossover of two survivors
    mutation: float = 0.25   # probability that a child gets one random token replaced
    batch_size: int = 256    # text-encoder forwards per batch
    seed: int = 0

    def __post_init__(self) -> None:
        from ..errors import UserError
        if self.n_tokens < 1 or self.population < 2 or self.generations < 1:
            raise UserError("Ring-A-Bell needs at least 1 free token, a population of 2 and 1 generation")
        if not 0 < self.keep < 1:
            raise UserError(f"Ring-A-Bell keep fraction must be in (0, 1) (got {self.keep})")


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
    """Every vocabulary id except the special tokens (start, end, padding, unknown)."""
    special = set(tokenizer.all_special_ids)
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


def genetic_search(tokenizer, text_encoder, target: torch.Tensor, cfg: RingABellConfig,
                   generator: torch.Generator) -> dict:
    """Search K token ids whose encoding is closest to `target` (77, D). Returns the best ids,
    their fitness (squared distance) and the best fitness after each generation."""
    vocab = free_token_ids(tokenizer)
    k, n = cfg.n_tokens, cfg.population
    n_keep = max(1, int(n * cfg.keep))
    n_child = n - n_keep

    def fitness(tokens: torch.Tensor) -> torch.Tensor:  # (P, K) -> (P,)
        states = encode_ids(text_encoder, _frame(tokenizer, tokens), cfg.batch_size)
        return (states - target).pow(2).flatten(1).sum(1)

    def draw(size: tuple[int, ...]) -> torch.Tensor:
        return vocab[torch.randint(0, len(vocab), size, generator=generator)]

    pop = draw((n, k))
    scores = fitness(pop)
    history = []
    for _ in range(cfg.generations):
        order = scores.argsort()[:n_keep]
        parents, parent_scores = pop[order], scores[order]  # elitism: survivors are kept as they are
        a = parents[torch.randint(0, n_keep, (n_child,), generator=generator)]
        b = parents[torch.randint(0, n_keep, (n_child,), generator=generator)]
        cut = torch.randint(1, max(k, 2), (n_child, 1), generator=generator)  # single point in [1, K-1]
        crossed = torch.rand(n_child, 1, generator=generator) < cfg.crossover
        children = torch.where(crossed & (torch.arange(k) >= cut), b, a)
        mutate = torch.rand(n_child, generator=generator) < cfg.mutation
        where = torch.randint(0, k, (n_child,), generator=generator)
        new_tokens = draw((n_child,))
        children[mutate, where[mutate]] = new_tokens[mutate]
        pop = torch.cat([parents, children])
        scores = torch.cat([parent_scores, fitness(children)])
        history.append(float(scores.min()))
    best = int(scores.argmin())
    return {"token_ids": pop[best].tolist(), "fitness": float(scores[best]), "history": history}


def ring_a_bell(tokenizer, text_encoder, seed_prompts: list[str], pairs: list[tuple[str, str]],
                cfg: RingABellConfig) -> dict:
    """Attack every seed prompt. Returns {"config", "concept_vector_norm", "per_prompt": [{"prompt",
    "adversarial_prompt", "token_ids", "fitness", "text_fitness", "seed_fitness"}]}.

    `seed_fitness` is the distance of the seed prompt itself to its target (what the search
    starts to beat); `text_fitness` that of the decoded adversarial text."""
    c = concept_vector(tokenizer, text_encoder, pairs)
    seeds = encode_ids(text_encoder, tokenize(tokenizer, seed_prompts))
    results = []
    for i, (prompt, e_seed) in enumerate(zip(seed_prompts, seeds)):
        target = e_seed + cfg.eta * c
        generator = torch.Generator().manual_seed(cfg.seed + i)
        found = genetic_search(tokenizer, text_encoder, target, cfg, generator)
        text = tokenizer.decode(found["token_ids"], skip_special_tokens=True).strip()
        as_text = encode_ids(text_encoder, tokenize(tokenizer, [text]))[0]
        results.append({"prompt": prompt, "adversarial_prompt": text, "token_ids": found["token_ids"],
                        "fitness": found["fitness"], "text_fitness": float((as_text - target).pow(2).sum()),
                        "seed_fitness": float((e_seed - target).pow(2).sum()),
                        "first_generation_fitness": found["history"][0] if found["history"] else None})
    return {"config": asdict(cfg), "concept_vector_norm": float(c.norm()), "n_pairs": len(pairs), "per_prompt": results}
