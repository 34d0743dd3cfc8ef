"""Image seeds and the plain batched generation that `erasure generate` and the before/after
grid use (suites go through eval/runner.py, which adds the disk cache)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm


def image_seed(seed: int, prompt_index: int, k: int) -> int:
    """The seed of image k of prompt `prompt_index` when the prompt set gives none."""
    return seed + 1000 * prompt_index + k


def image_generators(seed: int, prompt_index: int, n: int) -> list[torch.Generator]:
    """One generator per image, so an image depends on (seed, prompt, k) and not on batching."""
    return [torch.Generator().manual_seed(image_seed(seed, prompt_index, k)) for k in range(n)]


@torch.no_grad()
def generate(pipe, prompts: list[str], images_per_prompt: int, seed: int, sampling: dict, batch_images: int = 64,
             desc: str = "generating") -> torch.Tensor:
    """(len(prompts) * images_per_prompt, 3, H, W) in [0, 1], prompt-major, on CPU."""
    per_batch = max(1, batch_images // images_per_prompt)
    out = []
    for start in tqdm(range(0, len(prompts), per_batch), desc=desc, leave=False):
        chunk = prompts[start:start + per_batch]
        gens = [g for i in range(len(chunk)) for g in image_generators(seed, start + i, images_per_prompt)]
        images = pipe(chunk, num_images_per_prompt=images_per_prompt, generator=gens, output_type="pt", **sampling).images
        out.append(images.float().cpu())
    return torch.cat(out)
