"""The discrete prompt attack in the UnlearnDiffAtk form (Zhang et al., ECCV 2024).

k prefix tokens are optimised as probability vectors over the vocabulary, starting uniform.
The attack walks `timesteps` evenly spaced diffusion timesteps from the least to the most noisy
(UnlearnDiffAtk: 50 of 1000, t = 10, 30, ..., 990); at each one it takes `iterations` steps
(UnlearnDiffAtk: 40), then judges:

  1. straight-through one-hot: the forward pass uses the one-hot of a token *sampled* from each
     vector, the backward pass hands the gradient (clipped to [-1, 1]) to the vector itself;
  2. loss = MSE(eps_theta(x_t, t, E(adv + prompt)), eps): the attacked (erased) model denoising
     the *original* model's image of the prompt noised at this t with fresh noise (the erased
     model used as its own diffusion classifier; no original UNet is needed);
  3. an Adam step (lr 0.01, weight decay 0.1) and the exact Euclidean projection of every vector
     back onto the probability simplex;
  4. after the block of iterations at one timestep, the argmax tokens are decoded to text, the
     erased model generates that adversarial prompt with the prompt's seed and guidance (the
     caller's `check`: erasure/eval/asr.py draws it with the reference's LMS sampler on Stable
     Diffusion), the judge decides, and the attack stops at the first success.

So a full attack is up to 50 x 40 = 2000 gradient steps and 50 judged images per prompt.
`timesteps` is the budget knob for a cheaper run (fewer, still evenly spread, checks).

Where we differ, deliberately:
  * the start/end/padding tokens are left out of the optimised vocabulary, so the judged text
    is exactly the optimised tokens (the reference can pick them and then decodes them away);
  * a text already judged (the argmax did not move since the last check) is not generated
    again: same text, same seed, same image, so the outcome is known;
  * every random draw (token samples, noise) comes from the attack's own seeded generator, so a
    run can be repeated.
Why the sampled one-hot and the uniform start: an attack that starts from a random one-hot and
takes the argmax in the forward pass never moves its argmax at lr 0.01, so it only judges its
random initial prefix again and again. The structure above is the reference's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..sampling import add_noise
from .text import encode_with_prefix


@dataclass
class DiscreteAttackConfig:
    n_tokens: int = 5          # k prefix tokens (UnlearnDiffAtk: 5 for nudity, 3 for objects)
    timesteps: int = 50        # evenly spaced timesteps, one judged image after each (UnlearnDiffAtk: 50)
    iterations: int = 40       # Adam steps at each timestep (UnlearnDiffAtk: 40)
    lr: float = 0.01
    weight_decay: float = 0.1
    seed: int = 0

    @classmethod
    def budgeted(cls, budget: float = 1.0, **fields) -> DiscreteAttackConfig:
        """The config with its judged timesteps scaled by `budget` (0.2: 10 of 50, a cheaper run;
        a budget that rounds to 0 timesteps is refused by run_attack)."""
        cfg = cls(**fields)
        return replace(cfg, timesteps=int(round(cfg.timesteps * budget)))


def attack_timesteps(n: int, num_train_timesteps: int = 1000) -> list[int]:
    """n evenly spaced timesteps, centred in their bins, ascending (n=50 of 1000: 10, 30, ..., 990)."""
    step = num_train_timesteps / n
    return [int(step * i + step / 2) for i in range(n)]


def project_to_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of `v` onto {p >= 0, sum p = 1} (sort-based, exact)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / k > 0
    rho = cond.to(v.dtype).cumsum(-1).argmax(-1, keepdim=True)  # last index where cond holds
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def sampled_one_hot(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Forward: one-hot of a token drawn from each row; backward: the gradient goes to `probs`."""
    drawn = torch.multinomial(probs.detach().cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    hard = F.one_hot(drawn, probs.shape[-1]).to(probs.dtype)
    return hard + probs - probs.detach()


def decode_prefix(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def discrete_attack(pipe, prompt: str, target_latent: torch.Tensor, check, cfg: DiscreteAttackConfig) -> dict:
    """Attack one prompt. `check(adversarial_prompt) -> bool` generates and judges.
    Returns {"success", "checks", "iterations", "timestep", "adversarial_prompt", "loss", "token_ids",
    "images_judged", "probs"}."""
    return discrete_attack_batch(pipe, [prompt], target_latent,
                                 lambda rows, texts: [bool(check(text)) for text in texts], cfg)[0]


def discrete_attack_batch(pipe, prompts: list[str], target_latents: torch.Tensor, check,
                          cfg: DiscreteAttackConfig) -> list[dict]:
    """Attack several prompts at once: one batched text-encoder and UNet call per step instead of
    one per prompt (about 2x the throughput of one prompt at a time on a CPU, measured on MiniSD).
    Each prompt's run is still the single-prompt attack: its own generator seeded `cfg.seed` (the
    same token and noise draws as alone), its own distributions, its own loss (the batch's loss is
    the *sum* of the prompts' MSEs, so no prompt's gradient is scaled by the batch size), its own
    Adam state (Adam and its weight decay act elementwise, so one optimiser over the stacked
    tensor is one optimiser per prompt) and its own stop at its first judged success.
    `target_latents`: (B, C, h, w), row i the original model's image of prompt i.
    `check(rows, texts) -> [bool]` generates and judges texts[j] as an attack on prompt rows[j].

    Memory: the UNet call keeps its activations for the backward pass to the token vectors, so
    its size is the number of prompts; a caller bounds it by attacking fewer prompts per call
    (run_attack's `attack_batch`), which leaves every prompt's attack as it is (the same draws
    and tokens; batched kernels differ only by float noise). The pipeline may
    run in bfloat16 (the noised latents are cast to the UNet's dtype; the token distributions,
    the Adam state and the loss stay float32) and its UNet may checkpoint its gradients
    (`unet.enable_gradient_checkpointing()`: blocks recomputed in the backward pass)."""
    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    device = target_latents.device
    special = set(tokenizer.all_special_ids)
    full_table = text_encoder.get_input_embeddings().weight.detach()
    allowed = torch.tensor([i for i in range(full_table.shape[0]) if i not in special])
    table = full_table[allowed.to(full_table.device)].float()  # (V', D)
    n = len(prompts)
    generators = [torch.Generator().manual_seed(cfg.seed) for _ in prompts]
    probs = torch.full((n, cfg.n_tokens, len(allowed)), 1.0 / len(allowed), device=device, requires_grad=True)
    opt = torch.optim.Adam([probs], lr=cfg.lr, weight_decay=cfg.weight_decay)
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    judged: list[dict[str, bool]] = [{} for _ in prompts]
    losses = [float("nan")] * n
    results: list[dict | None] = [None] * n
    active = list(range(n))

    def finish(i: int, success: bool, checks: int, t_value: int, text: str, token_ids: list[int]) -> None:
        results[i] = {"success": success, "checks": checks, "iterations": checks * cfg.iterations, "timestep": t_value,
                      "adversarial_prompt": text, "loss": losses[i], "token_ids": token_ids,
                      "images_judged": len(judged[i]), "probs": probs[i].detach().clone()}

    bar = tqdm(attack_timesteps(cfg.timesteps, n_train), desc="  timesteps", leave=False, dynamic_ncols=True)
    last: dict[int, tuple[str, list[int]]] = {}
    for checks, t_value in enumerate(bar, start=1):
        rows = torch.tensor(active, device=device)
        t = torch.full((len(active),), t_value, device=device)
        for _ in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            one_hots, noises = [], []
            for i in active:  # per prompt, in the single-prompt order: its token draw, then its noise
                one_hots.append(sampled_one_hot(probs[i], generators[i]))
                noises.append(torch.randn(target_latents.shape[1:], generator=generators[i]))
            cond = encode_with_prefix(tokenizer, text_encoder, [prompts[i] for i in active], torch.stack(one_hots) @ table)
            noise = torch.stack(noises).to(device)
            x_t = add_noise(target_latents[rows], noise, alphas, t).to(unet.dtype)  # fp32 latents, a bf16 UNet's input
            per_prompt = (unet(x_t, t, encoder_hidden_states=cond).sample.float() - noise).pow(2).flatten(1).mean(1)
            per_prompt.sum().backward()
            probs.grad.clamp_(-1, 1)  # the reference's straight-through backward is a hardtanh
            opt.step()
            with torch.no_grad():
                probs[rows] = project_to_simplex(probs[rows])
            for j, i in enumerate(active):
                losses[i] = per_prompt[j].item()
        bar.set_postfix(t=t_value, loss=f"{sum(losses[i] for i in active) / len(active):.4f}", left=len(active))
        for i in active:
            token_ids = allowed[probs[i].detach().argmax(-1).cpu()].tolist()
            last[i] = (f"{decode_prefix(tokenizer, token_ids)} {prompts[i]}".strip(), token_ids)
        new = [i for i in active if last[i][0] not in judged[i]]
        for i, seen in zip(new, check(new, [last[i][0] for i in new]) if new else []):
            judged[i][last[i][0]] = bool(seen)
        for i in [i for i in active if judged[i][last[i][0]]]:
            finish(i, True, checks, t_value, *last[i])
            active.remove(i)
        if not active:
            break
    bar.close()
    for i in active:
        finish(i, False, checks, t_value, *last[i])
    return results
