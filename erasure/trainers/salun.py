"""SalUn: weight saliency for machine unlearning (Fan et al., ICLR 2024), diffusion part.

1. Data: the base model draws its own forget set D_f (for the forget prompts) and retain set
   D_r (erasure/selfdata.py); the paper uses 800 + 800 images for nudity. The prompts are the
   world's (the concept's words, its anchor as D_r), or the recipe's: `forget_prompt` for D_f
   and `retain_prompts` for D_r (the open world's catalogue holds the reference's, see below).
2. Saliency mask (Eq. 5-6): accumulate, over one pass of D_f, the gradient of the forgetting
   loss -MSE(eps, eps_cfg(x_t, t, c_f)) with eps_cfg = (1 + w) eps(c_f) - w eps(c_0), w = 7.5;
   rank |grad| over all UNet weights at once and keep the top `mask_ratio` (mask = 1).
3. Training (Eq. 8, the relabelling form the paper uses for diffusion): on D_f noised to x_t,

       L_f = MSE(eps_theta(x_t, t, c_f), sg[eps_theta(x_t, t, c_a)])

   (the target is the *current* model under the anchor c_a, detached), plus alpha times the
   ordinary denoising loss on D_r. The gradient is multiplied by the mask before every step,
   so only salient weights ever change.

The defaults are the reference's class-forgetting settings (lr 1e-5, batch 8, alpha 0.5, mask
ratio 0.5, 5 epochs; 800 images = 500 steps). The Stable Diffusion catalogue adds, per concept:
  * nudity (and its aliases): D_f and the forget loss under "a photo of a nude person", D_r and
    the relabelling target under "a photo of a person wearing clothes", alpha 0.1, 1 epoch of 800
    images = 100 steps (Unlearn-Saliency SD/README.md, train-scripts/nsfw_removal.py);
  * the object classes: "an image of a {concept}", D_r the other nine Imagenette class prompts,
    class k relabelled as class k + 1 of Imagenette's order (church -> French horn, parachute ->
    tench), 960 images, 600 steps (train-scripts/random_label.py, dataset.py);
  * no style recipe: the reference's SD code has none.

Where we differ, deliberately:
  * D_f and D_r are self-generated for every concept. The reference generates them for nudity
    but trains classes on Imagenette's real photos (about 950 per class; D_r ~8,500 photos of the
    other nine), which a run on any model of any world cannot assume; our D_r holds `n_retain`
    (800) images, drawn from at random as the reference draws its shuffled D_r.
  * The reference does not say how its nudity images were sampled; ours use the model's own
    sampling (SD: 50 steps, guidance 7.5; `--data-steps`, `--data-guidance`).
  * The mask is computed once per (base model, forget data, mask settings) and cached; `--mask`
    reuses a saved one. It is written beside the erasure as `salun_mask.safetensors`.
  * One version of the reference's nsfw_removal.py and random_label.py takes
    `next(iter(forget_dl))` of an unshuffled loader every step (the same first batch), and one
    version of generate_mask.py ranks |grad| ascending (it keeps the least salient half); here
    every step draws a fresh batch, the top half is kept, and a test checks that masked weights
    do not move.
  * On MiniSD each forget prompt's anchor keeps its colour and style ("a red disk" ->
    "a red square"), and D_r holds the other objects' captions (the world's, erasure/worlds/), which
    is what keeps the other objects intact on a model this small.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import SelfDataConfig, doc
from ..errors import UserError
from ..files import load_tensors, save_tensors
from ..registry import register_method
from .base import Trainer

MASK_FILE = "salun_mask.safetensors"


@dataclass
class SalUnConfig(SelfDataConfig):
    target: str = doc("weights the mask ranks (SalUn: every UNet weight)", default="unet")
    steps: int = doc("optimizer steps (paper, classes: 5 epochs x 800 images / batch 8 = 500)", default=500)
    lr: float = doc("Adam learning rate (paper: 1e-5)", default=1e-5)
    batch_size: int = doc("forget and retain images per step (paper: 8)", default=8)
    alpha: float = doc("weight of the retain loss (paper: 0.5 for classes, 0.1 for nudity)", default=0.5)
    mask_ratio: float = doc("fraction of weights the saliency mask keeps trainable (paper: 0.5)", default=0.5)
    mask_guidance: float = doc("w of the CFG noise prediction whose loss gradient ranks the weights (paper: 7.5)",
                               default=7.5)
    mask: str = doc("a saved salun_mask.safetensors to reuse instead of computing one", default="")
    saliency_device: str = doc("where the saliency ranking of every weight's |gradient| runs: auto (cpu for a Stable "
                               "Diffusion UNet on CUDA, where it needs several GB; else the training device), cpu or "
                               "device", default="auto")
    n_forget: int = doc("self-generated forget images (paper: 800)", default=800)
    n_retain: int = doc("self-generated retain images (paper: 800)", default=800)
    forget_prompt: str = doc("the prompt D_f is drawn from and trained under, '{concept}' standing for the concept's "
                             "name (empty = the world's concept prompts; used while --concept-prompts is auto)",
                             default="")
    retain_prompts: str = doc("the prompts D_r is drawn from, separated by '|' (empty = the world's: on Stable "
                              "Diffusion the anchor); those that name a concept of the run are left out, and when the "
                              "forget prompt is one of them the anchor defaults to the one after it (class k -> k + 1)",
                              default="")

    # MiniSD: fewer self-generated images and steps so data + mask + training fit in minutes on a CPU
    world_defaults: ClassVar[dict] = {"mini": {"n_forget": 128, "n_retain": 128, "steps": 300, "lr": 1e-4}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.mask_ratio <= 1:
            raise UserError(f"--mask-ratio must be in (0, 1] (got {self.mask_ratio})")
        if self.n_forget < 1 or self.n_retain < 1:
            raise UserError("--n-forget and --n-retain must be at least 1")
        if self.alpha < 0:
            raise UserError("--alpha must be >= 0")
        if self.saliency_device not in ("auto", "cpu", "device"):
            raise UserError(f"--saliency-device must be auto, cpu or device (got '{self.saliency_device}')")


class SalUnTrainer(Trainer):
    config_cls = SalUnConfig

    def setup(self) -> None:
        cfg: SalUnConfig = self.config
        listed = [p.strip() for p in cfg.retain_prompts.split("|") if p.strip()]
        forget_prompts, anchor_prompts, retain_prompts = [], [], []
        for concept in cfg.concepts:
            f, a = self.training_prompts(concept, listed)
            forget_prompts += f
            anchor_prompts += a
            retain_prompts += [] if listed else self.retain_prompts(concept)
        if listed:
            retain_prompts = self.listed_retain_prompts(listed, forget_prompts)
        # the texts each set is drawn from and trained under, row for row with the embeddings below
        self.forget_texts, self.anchor_texts, self.retain_texts = forget_prompts, anchor_prompts, retain_prompts
        self.forget_data = self.self_data(forget_prompts, cfg.n_forget)
        self.retain_data = self.self_data(retain_prompts, cfg.n_retain)
        self.c_forget, self.c_anchor = self.embed(forget_prompts), self.embed(anchor_prompts)
        self.c_retain, self.c_empty = self.embed(retain_prompts), self.embed([""])
        self.mask = self.load_or_compute_mask()

    # ------------------------------------------------------------------ step 1: the prompts of D_f and D_r
    def training_prompts(self, concept: str, listed: list[str]) -> tuple[list[str], list[str]]:
        """Forget prompts of `concept` and, row for row, the anchor each is relabelled to: the
        world's, or `forget_prompt` with its relabelling target (`relabel_target`)."""
        cfg: SalUnConfig = self.config
        if not cfg.forget_prompt.strip() or cfg.concept_prompts != "auto":
            return self.anchored_prompts(concept)
        forget = [cfg.forget_prompt.strip().replace("{concept}", self.world.canonical(concept) or concept)]
        anchor = self.relabel_target(concept, forget[0], listed)
        return forget, self.world.anchor_prompts(forget, concept, anchor, cfg.concept_prompts)

    def relabel_target(self, concept: str, forget_prompt: str, listed: list[str]) -> str:
        """--anchor; else, when the forget prompt is one of the listed retain prompts (the
        reference's class forgetting: ten class prompts), the one after it, cyclically (class k is
        relabelled as class k + 1); else the world's anchor of the concept."""
        own = [p.lower() for p in listed]
        if self.config.anchor.strip() or forget_prompt.lower() not in own:
            return self.anchor_of(concept)
        return listed[(own.index(forget_prompt.lower()) + 1) % len(listed)]

    def listed_retain_prompts(self, listed: list[str], forget_prompts: list[str]) -> list[str]:
        """`retain_prompts` less the forget prompts and those naming a concept of the run."""
        phrases = [w for c in self.config.concepts for w in self.world.concept_phrases(c)]
        forget = {p.lower() for p in forget_prompts}
        kept = [p for p in listed if p.lower() not in forget
                and not any(re.search(rf"\b{re.escape(w)}\b", p, re.IGNORECASE) for w in phrases)]
        if not kept:
            raise UserError("--retain-prompts: every prompt names a concept this run erases; list prompts of other "
                            "concepts (or leave it empty for the world's)")
        return kept

    # ------------------------------------------------------------------ step 2: the saliency mask
    def mask_key(self) -> str:
        cfg: SalUnConfig = self.config
        ident = [str(self.forget_data.path), cfg.target, cfg.mask_ratio, cfg.mask_guidance, cfg.seed, len(self.forget_data)]
        return hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:20]

    def load_or_compute_mask(self) -> dict[str, torch.Tensor]:
        cfg: SalUnConfig = self.config
        path = self.cache_dir / "salun_masks" / f"{self.mask_key()}.safetensors"
        source = cfg.mask or (str(path) if path.exists() else "")
        if source:
            mask = load_tensors(source, self.device)
            missing = sorted(set(self.trainable) - set(mask))
            if missing:
                raise UserError(f"--mask {source} does not cover {len(missing)} trained tensor(s), e.g. {missing[0]}; "
                                "it was made for another model or --target")
            return {k: mask[k].bool() for k in self.trainable}
        mask = self.saliency_mask()
        save_tensors(path, {k: v.to(torch.uint8) for k, v in mask.items()})
        return mask

    def saliency_mask(self) -> dict[str, torch.Tensor]:
        """Eq. 5-6: top `mask_ratio` of |grad of the CFG forgetting loss| over D_f, ranked globally.

        Memory (an SD 1.x UNet, 860M weights): the pass's gradients accumulate in the weights'
        own .grad (one fp32 copy, 3.4 GB; autograd adds each batch's in place), the |grad| vector
        is filled tensor by tensor as the .grad are freed, on `plan.saliency_device` (the CPU for
        a big UNet on CUDA), and ranked there. kthvalue is an exact selection: the mask is the
        same on either device."""
        cfg: SalUnConfig = self.config
        params = list(self.trainable.values())
        for p in params:
            p.grad = None
        data = self.forget_data
        # its own random stream: the training draws must not depend on whether the mask was cached
        generator = torch.Generator().manual_seed(cfg.seed + 7919)
        for start in tqdm(range(0, len(data), cfg.batch_size), desc="SalUn saliency mask", dynamic_ncols=True):
            x0 = data.latents[start:start + cfg.batch_size].to(self.device)
            c_f = self.c_forget[data.prompt_ids[start:start + cfg.batch_size].to(self.device)]
            x_t, t, noise = self.noised(x0, generator)
            with self.autocast():
                eps_f = self.unet(x_t, t, encoder_hidden_states=c_f).sample.float()
                eps_0 = self.unet(x_t, t, encoder_hidden_states=self.c_empty.expand(len(x0), -1, -1)).sample.float()
            eps_cfg = (1 + cfg.mask_guidance) * eps_f - cfg.mask_guidance * eps_0
            loss = -F.mse_loss(eps_cfg, noise)
            loss.backward(inputs=params)
        # |grad| of every weight in one vector, and the keep-th largest of it as the (n - keep + 1)-th
        # smallest: kthvalue returns one number, where topk would hold `keep` values and int64
        # indices (~5 GB for an SD 1.x UNet)
        where = torch.device("cpu") if self.plan.saliency_device == "cpu" else self.device
        shapes = {k: p.shape for k, p in self.trainable.items()}
        scores = torch.empty(sum(p.numel() for p in params), dtype=torch.float32, device=where)
        offset = 0
        for p in params:
            n = p.numel()
            if p.grad is None:  # a weight the loss does not reach
                scores[offset:offset + n] = 0.0
            else:
                scores[offset:offset + n].copy_(p.grad.abs_().flatten())
            offset += n
            p.grad = None
        keep = max(1, math.ceil(cfg.mask_ratio * scores.numel()))
        # ties at the threshold may keep a few more than asked
        threshold = torch.kthvalue(scores, scores.numel() - keep + 1).values
        mask, offset = {}, 0
        for k, shape in shapes.items():
            n = math.prod(shape)
            mask[k] = (scores[offset:offset + n] >= threshold).view(shape).to(self.device)
            offset += n
        return mask

    # ------------------------------------------------------------------ step 3: masked relabelling
    def compute_loss(self):
        cfg: SalUnConfig = self.config
        x_t, t, _, prompt_ids = self.noised_batch(self.forget_data, cfg.batch_size)  # this process's rows
        with torch.no_grad():  # sg[eps_theta(x_t, t, c_a)]: the current model's anchor prediction, detached
            target = self.unet(x_t, t, encoder_hidden_states=self.c_anchor[prompt_ids]).sample.float()
        forget_loss = F.mse_loss(self.unet(x_t, t, encoder_hidden_states=self.c_forget[prompt_ids]).sample.float(), target)

        retain_loss = self.denoising_loss(self.retain_data, self.c_retain, cfg.batch_size)
        loss = forget_loss + cfg.alpha * retain_loss
        return loss, {"forget": forget_loss.item(), "retain": retain_loss.item()}

    def before_optimizer_step(self) -> None:
        for k, p in self.trainable.items():
            if p.grad is not None:
                p.grad.mul_(self.mask[k])

    def save(self, out_dir):
        # before the manifest, which is written last and marks the folder complete
        save_tensors(Path(out_dir) / MASK_FILE, {k: v.to(torch.uint8) for k, v in self.mask.items()})
        return super().save(out_dir)


register_method("salun", SalUnConfig, SalUnTrainer)
