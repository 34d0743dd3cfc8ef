"""Prompt encoding with free token embeddings: the text encoder reads `k` vectors of our choice
in place of `k` prefix tokens right after the start token (where UnlearnDiffAtk and
AdvUnlearn put their adversarial tokens). A forward hook on the token-embedding table swaps the
vectors in, so the rest of the encoder (positions, causal mask, final norm) is the model's own
code and gradients flow back to the vectors."""
from __future__ import annotations

import contextlib

import torch


def prefixed_ids(tokenizer, prompts: list[str], k: int, device) -> torch.Tensor:
    """(B, 77) ids: start token, k placeholder slots, the prompt's tokens, end token, padding."""
    max_len = tokenizer.model_max_length
    ids = tokenizer(prompts, padding="max_length", max_length=max_len - k, truncation=True, return_tensors="pt").input_ids
    filler = ids[:, -1:].expand(-1, k)  # placeholder ids (the padding id): overwritten by the hook
    return torch.cat([ids[:, :1], filler, ids[:, 1:]], dim=1).to(device)


@contextlib.contextmanager
def injected(text_encoder, embeds: torch.Tensor, start: int = 1):
    """Within the block, token-embedding outputs at positions start..start+k are `embeds`
    ((k, D) or (B, k, D))."""
    table = text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        k = embeds.shape[-2]
        e = embeds.to(output.dtype)
        e = e.expand(output.shape[0], -1, -1) if e.ndim == 3 else e.unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :start], e, output[:, start + k:]], dim=1)

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
