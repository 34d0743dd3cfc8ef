"""Prompt encoding with free token embeddings: the text encoder reads `k` vectors of our choice
in place of `k` tokens: right after the start token (where UnlearnDiffAtk and AdvUnlearn put
their adversarial tokens; `encode_with_prefix`), or where a prompt names its concept (where
concept inversion puts its learned token; `encode_with_slots`). A forward hook on the
token-embedding table swaps the vectors in, so the rest of the encoder (positions, causal mask,
final norm) is the model's own code and gradients flow back to the vectors."""
from __future__ import annotations

import contextlib

import torch


def prefixed_ids(tokenizer, prompts: list[str], k: int, device) -> torch.Tensor:
    """(B, 77) ids: start token, k placeholder slots, the prompt's tokens, end token, padding."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=max_len - k, truncation=True, return_tensors="pt").input_ids
    filler = ids[:, -1:].expand(-1, k)  # placeholder ids (the padding id): overwritten by the hook
    return torch.cat([ids[:, :1], filler, ids[:, 1:]], dim=1).to(device)


def slotted_ids(tokenizer, parts: list[tuple[str, str]], k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 77) ids and (B,) slot starts for prompts given as (text before, text after) the k
    slots: start token, the text before, k placeholder slots, the text after (cut to fit), end
    token, padding."""
    max_len = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, starts = [], []
    for before, after in parts:
        head = tokenizer(before, add_special_tokens=False).input_ids if before.strip() else []
        tail = tokenizer(after, add_special_tokens=False).input_ids if after.strip() else []
        head = head[:max_len - 2 - k]
        tail = tail[:max_len - 2 - k - len(head)]
        ids = [tokenizer.bos_token_id, *head, *([pad] * k), *tail, tokenizer.eos_token_id]
        rows.append(ids + [pad] * (max_len - len(ids)))
        starts.append(1 + len(head))
    return torch.tensor(rows, device=device), torch.tensor(starts, device=device)


@contextlib.contextmanager
def injected(text_encoder, embeds: torch.Tensor, start: int | torch.Tensor = 1):
    """Within the block, token-embedding outputs at positions start..start+k are `embeds`
    ((k, D) or (B, k, D)); `start` is one position for every row or a (B,) tensor of them."""
    table = text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        k = embeds.shape[-2]
        e = embeds.to(output.dtype)
        e = e.expand(output.shape[0], -1, -1) if e.ndim == 3 else e.unsqueeze(0).expand(output.shape[0], -1, -1)
        if isinstance(start, int):
            return torch.cat([output[:, :start], e, output[:, start + k:]], dim=1)
        rows = torch.arange(output.shape[0], device=output.device).unsqueeze(1)
        out = output.clone()
        out[rows, start.to(output.device).unsqueeze(1) + torch.arange(k, device=output.device)] = e
        return out

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode_with_prefix(tokenizer, text_encoder, prompts: list[str], prefix_embeds: torch.Tensor) -> torch.Tensor:
    """(B, 77, D) hidden states for `prompts` with `prefix_embeds` (k, D) as the first k tokens."""
    device = prefix_embeds.device
    ids = prefixed_ids(tokenizer, prompts, prefix_embeds.shape[-2], device)
    with injected(text_encoder, prefix_embeds):
        return text_encoder(ids)[0]


def encode_with_slots(tokenizer, text_encoder, parts: list[tuple[str, str]], embeds: torch.Tensor) -> torch.Tensor:
    """(B, 77, D) hidden states for prompts given as (text before, text after), with `embeds`
    (k, D) as the k tokens between."""
    ids, starts = slotted_ids(tokenizer, parts, embeds.shape[-2], embeds.device)
    with injected(text_encoder, embeds, starts):
        return text_encoder(ids)[0]
