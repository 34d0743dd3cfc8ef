"""Tiny random-weight Stable Diffusion parts built from configs: the same classes as SD 1.x,
small enough that a test trains and samples in seconds on a CPU. 64x64 images (4x16x16 latents)
so the MiniSD judge can read them."""
from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def tiny_tokenizer_dir() -> Path:
    """The real CLIP tokenizer, built from open_clip's BPE file (independent of MiniSD's weights)."""
    from erasure.worlds.mini.tokenizer import build_clip_tokenizer_files
    return build_clip_tokenizer_files(Path(tempfile.mkdtemp(prefix="clip_tok_")))


def build_tiny_pipeline(seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from erasure.worlds.mini.nets import SCHEDULER_CONFIG

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                        norm_num_groups=4, sample_size=64)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, projection_dim=32,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    tokenizer = CLIPTokenizer.from_pretrained(tiny_tokenizer_dir())
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
