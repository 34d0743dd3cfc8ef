"""MiniSD's networks: the diffusers/transformers classes of Stable Diffusion 1.x at toy sizes,
and the judge that tells object, colour and style apart.

Sizes are set for a 2-core CPU (see docs/minisd.md for the measured trade-offs): 64x64 images,
a factor-4 VAE (4x16x16 latents), a UNet with cross-attention at 8x8 and 4x4, and a 3-layer
128-d CLIP text encoder over the full 49,408-token CLIP vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .world import COLORS, OBJECTS, STYLES

TEXT_DIM = 128

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=64,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(48, 96, 160), layers_per_block=1, cross_attention_dim=TEXT_DIM,
    attention_head_dim=8, norm_num_groups=16,
)

TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, projection_dim=TEXT_DIM,
    num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)

# Stable Diffusion's training noise schedule.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def build_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


def build_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


class Judge(nn.Module):
    """Four conv layers with BatchNorm (32-64-96-128), global average pool, one linear head per
    attribute. Logits per head; `predict` gives labels and softmax confidences."""

    heads = {"object": OBJECTS, "color": COLORS, "style": STYLES}

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 32, 64, 96, 128]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.object = nn.Linear(128, len(OBJECTS))
        self.color = nn.Linear(128, len(COLORS))
        self.style = nn.Linear(128, len(STYLES))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (B, 3, 64, 64) in [0, 1]."""
        h = self.features(images * 2 - 1).mean(dim=(2, 3))
        return {"object": self.object(h), "color": self.color(h), "style": self.style(h)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, tuple[list[str], torch.Tensor]]:
        if images.shape[-2:] != (64, 64) or images.shape[-3] != 3:
            raise ValueError(f"the MiniSD judge takes (B, 3, 64, 64) images, got {tuple(images.shape)}; "
                             "resize the images to 64x64 RGB first")
        logits = self(images)
        out = {}
        for head, names in self.heads.items():
            prob = F.softmax(logits[head].float(), -1)
            conf, idx = prob.max(-1)
            out[head] = ([names[i] for i in idx.tolist()], conf)
        return out
