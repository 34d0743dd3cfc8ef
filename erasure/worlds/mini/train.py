"""Train MiniSD from scratch: judge -> VAE -> text encoder -> latent cache -> UNet.

    python -m erasure.worlds.mini.train                       # everything, resumes where it stopped
    python -m erasure.worlds.mini.train --hours 2.5           # stop (cleanly) after 2.5 h of UNet
    python -m erasure.worlds.mini.train --stages judge        # only the judge

Every stage writes its result into --workdir and is skipped when that result exists. The UNet
stage checkpoints (safetensors + JSON, no pickles) every --checkpoint-minutes and resumes from
it exactly; without a full checkpoint it resumes from weights alone, taking VAE, text encoder
and EMA UNet from the shipped MiniSD folder (its training_state.json gives the step) and
re-warming the learning rate. Every --export-minutes it writes the EMA weights (fp16) to --out
as a diffusers StableDiffusionPipeline folder, with a judge evaluation in training_log.jsonl.

Recipe (docs/minisd.md has the measurements behind it): eps-prediction with SD's scaled-linear
betas, min-SNR-5 loss weights, AdamW 1e-3, 300 warm-up steps, grad-norm clip 1, EMA 0.999,
10% empty captions, captions redrawn every step from templates, synonyms and FR/DE. Unlike SD
the text encoder is first trained with attribute heads (so "disk", "cercle" and "Kreis" land
together), then frozen, as SD freezes CLIP: it makes each UNet step ~25% cheaper.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...files import (load_tensors, optimizer_from_tensors, optimizer_to_tensors, python_rng_state, save_tensors,
                         set_python_rng_state, write_json)
from . import nets
from .world import COLORS, OBJECTS, STYLES, random_caption, render, sample_scene
from .. import WORLD_FILE
from ...model_ref import SAMPLING_FILE
from .concepts import SAMPLING

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"
MINISD_DIR = PACKAGE_WEIGHTS / "minisd"
JUDGE_FILE = PACKAGE_WEIGHTS / "judge.safetensors"


def log(msg: str) -> None:
    tqdm.write(time.strftime("[%H:%M:%S] ") + msg)


def blur_and_noise(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur (sigma 0.3-1.2) and a little noise, so the judge is not fooled by the
    softness of VAE decodes."""
    sigma = 0.3 + 0.9 * torch.rand(1, generator=generator).item()
    radius = 3
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x**2 / (2 * sigma**2))
    k = (k / k.sum()).to(images.device)
    c = images.shape[1]
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    noise = torch.randn(images.shape, generator=generator).to(images.device) * 0.02
    return (out + noise).clamp(0, 1)


# ----------------------------------------------------------------------------- judge

def train_judge(steps: int, device: torch.device, seed: int = 1) -> nets.Judge:
    g = torch.Generator().manual_seed(seed)
    judge = nets.Judge().to(device)
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for step in tqdm(range(steps), desc="judge"):
        scene = sample_scene(64, g)
        images = render(scene, g, device)
        if step % 2:
            images = blur_and_noise(images, g)
        logits = judge(images)
        loss = sum(F.cross_entropy(logits[k], getattr(scene, k + "s" if k != "color" else "colors").to(device))
                   for k in ("object", "color", "style"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return judge.eval()


@torch.no_grad()
def judge_accuracy(judge: nets.Judge, n: int, seed: int, device: torch.device, transform=None) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    correct = {"object": 0, "color": 0, "style": 0}
    for start in range(0, n, 250):
        scene = sample_scene(min(250, n - start), g)
        images = render(scene, g, device)
        if transform is not None:
            images = transform(images)
        pred = judge(images)
        for head, labels in (("object", scene.objects), ("color", scene.colors), ("style", scene.styles)):
            correct[head] += (pred[head].argmax(-1).cpu() == labels).sum().item()
    return {k: v / n for k, v in correct.items()}


# ----------------------------------------------------------------------------- VAE

def train_vae(steps: int, device: torch.device, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    vae = nets.build_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    bar = tqdm(range(steps), desc="vae")
    for step in bar:
        images = render(sample_scene(16, g), g, device) * 2 - 1
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / images[0].numel()
        loss = F.l1_loss(recon, images) + F.mse_loss(recon, images) + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    with torch.no_grad():  # SD's convention: scale latents to unit variance
        lat = vae.encode(render(sample_scene(1024, g), g, device) * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return vae


# ----------------------------------------------------------------------------- text encoder

class CaptionBank:
    """Tokenizes captions with a cache: the caption space is finite, so most hits are free."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, captions: list[str]) -> torch.Tensor:
        missing = [c for c in set(captions) if c not in self.cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            for c, row in zip(missing, tok.input_ids):
                self.cache[c] = row
        return torch.stack([self.cache[c] for c in captions])


def draw_captions(objects, colors, styles, rng: random.Random, p_empty: float,
                  with_labels: bool = True) -> tuple[list[str], torch.Tensor | None]:
    """Captions for a batch and (if asked) the labels they name, 0 = unsaid, else index + 1."""
    from .world import parse_caption
    captions, labels = [], []
    for o, c, s in zip(objects.tolist(), colors.tolist(), styles.tolist()):
        cap = "" if rng.random() < p_empty else random_caption(o, c, s, rng)
        captions.append(cap)
        if with_labels:
            said = parse_caption(cap) if cap else {"object": None, "color": None, "style": None}
            labels.append([0 if said["object"] is None else o + 1, 0 if said["color"] is None else c + 1,
                           0 if said["style"] is None else s + 1])
    return captions, (torch.tensor(labels) if with_labels else None)


def train_text_encoder(steps: int, bank: CaptionBank, device: torch.device, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    te = nets.build_text_encoder().to(device)
    heads = torch.nn.ModuleList([torch.nn.Linear(nets.TEXT_DIM, len(v) + 1) for v in (OBJECTS, COLORS, STYLES)]).to(device)
    opt = torch.optim.AdamW(list(te.parameters()) + list(heads.parameters()), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="text encoder")
    for step in bar:
        scene = sample_scene(256, g)
        captions, labels = draw_captions(scene.objects, scene.colors, scene.styles, rng, p_empty=0.1)
        pooled = te(bank.ids(captions).to(device)).pooler_output
        labels = labels.to(device)
        losses = [F.cross_entropy(h(pooled), labels[:, i]) for i, h in enumerate(heads)]
        loss = sum(losses)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    # held-out check: every head must read its attribute back from the caption
    te.eval()
    scene = sample_scene(2000, g)
    captions, labels = draw_captions(scene.objects, scene.colors, scene.styles, random.Random(seed + 1000), 0.0)
    with torch.no_grad():
        pooled = torch.cat([te(bank.ids(captions[i:i + 500]).to(device)).pooler_output for i in range(0, 2000, 500)])
    acc = [(h(pooled).argmax(-1).cpu() == labels[:, i]).float().mean().item() for i, h in enumerate(heads)]
    log(f"text encoder attribute accuracy on held-out captions: object {acc[0]:.3f} colour {acc[1]:.3f} style {acc[2]:.3f}")
    return te


# ----------------------------------------------------------------------------- latent cache

@torch.no_grad()
def build_latent_cache(vae, n: int, device: torch.device, seed: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means, stds, objs, cols, stys = [], [], [], [], []
    for start in tqdm(range(0, n, 500), desc="latent cache"):
        scene = sample_scene(min(500, n - start), g)
        dist = vae.encode(render(scene, g, device) * 2 - 1).latent_dist
        means.append(dist.mean.cpu())
        stds.append(dist.std.cpu())
        objs.append(scene.objects), cols.append(scene.colors), stys.append(scene.styles)
    return {"mean": torch.cat(means), "std": torch.cat(stds), "objects": torch.cat(objs),
            "colors": torch.cat(cols), "styles": torch.cat(stys)}


# ----------------------------------------------------------------------------- UNet

# every prompt names its style ("plain" too): an unnamed style means "any", which the judge
# would then count as wrong
EVAL_PROMPTS = [f"a {s} {c} {o}" for i, (o, c) in enumerate((o, c) for o in OBJECTS for c in COLORS)
                for s in [STYLES[i % 4]]]


def export_pipeline(unet, text_encoder, vae, tokenizer_dir: Path, out_dir: Path, state: dict) -> None:
    """Write a StableDiffusionPipeline folder with fp16 weights, replacing `out_dir` atomically."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).to("cpu", torch.float16), text_encoder=copy.deepcopy(text_encoder).to("cpu", torch.float16),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir), unet=copy.deepcopy(unet).to("cpu", torch.float16),
        scheduler=DDIMScheduler(**nets.SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    tmp = out_dir.with_name(out_dir.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # Weights are stored in fp16 to fit the package budget, but compute is fp32: transformers
    # loads with dtype "auto" from this field, diffusers upcasts on its own.
    te_config = json.loads((tmp / "text_encoder" / "config.json").read_text())
    te_config["dtype"] = "float32"
    write_json(tmp / "text_encoder" / "config.json", te_config)
    write_json(tmp / "training_state.json", state)
    # the folder says which world it belongs to and how it samples (erasure/worlds/__init__.py,
    # erasure/model_ref.py): MiniSD's sampling settings were picked on its judge (docs/minisd.md)
    write_json(tmp / WORLD_FILE, {"world": "mini"})
    write_json(tmp / SAMPLING_FILE, SAMPLING)
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def evaluate_pipeline(pipe_dir: Path, judge: nets.Judge, device: torch.device, images_per_prompt: int = 2,
                      guidance: float = 4.0, steps: int = 25) -> dict[str, float]:
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    hits = {"object": 0, "color": 0, "style": 0}
    total = 0
    for i in range(0, len(EVAL_PROMPTS), 12):
        prompts = EVAL_PROMPTS[i:i + 12]
        out = pipe(prompts, num_images_per_prompt=images_per_prompt, guidance_scale=guidance, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(i), output_type="pt").images
        pred = judge.predict(out.to(device).float())
        for j, p in enumerate(prompts):
            o = next(x for x in OBJECTS if p.endswith(x))
            c = next(x for x in COLORS if f" {x} " in p)
            s = next((x for x in STYLES if f" {x} " in p), "plain")
            for k in range(images_per_prompt):
                n = j * images_per_prompt + k
                hits["object"] += pred["object"][0][n] == o
                hits["color"] += pred["color"][0][n] == c
                hits["style"] += pred["style"][0][n] == s
                total += 1
    return {k: v / total for k, v in hits.items()}


class UNetRun:
    """The UNet stage: state, one step, checkpoint, resume."""

    def __init__(self, args, device, vae, text_encoder, bank, cache) -> None:
        self.args, self.device, self.vae, self.te, self.bank, self.cache = args, device, vae, text_encoder, bank, cache
        torch.manual_seed(args.seed)
        self.unet = nets.build_unet().to(device)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=args.lr, weight_decay=1e-2)
        self.step, self.warmup_from = 0, 0
        self.rng = random.Random(args.seed)
        self.gen = torch.Generator().manual_seed(args.seed)
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
        self.alphas_cumprod = torch.cumprod(1 - betas, 0).to(device)
        self.scale = vae.config.scaling_factor
        self.ckpt = args.workdir / "unet_checkpoint"

    # -- state
    def save_checkpoint(self) -> None:
        tensors = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        tensors |= {f"ema.{k}": v for k, v in self.ema.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
        tensors |= opt_tensors
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.gen"] = self.gen.get_state()
        self.ckpt.mkdir(parents=True, exist_ok=True)
        save_tensors(self.ckpt / "state.safetensors", tensors)
        write_json(self.ckpt / "state.json", {"step": self.step, "warmup_from": self.warmup_from, "optimizer": opt_meta,
                                              "python_rng": python_rng_state(self.rng)})

    def load_checkpoint(self) -> bool:
        if not (self.ckpt / "state.json").exists():
            return False
        meta = json.loads((self.ckpt / "state.json").read_text())
        tensors = load_tensors(self.ckpt / "state.safetensors", self.device)
        self.unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        optimizer_from_tensors(self.opt, tensors, meta["optimizer"])
        torch.set_rng_state(tensors["rng.torch"].cpu())
        self.gen.set_state(tensors["rng.gen"].cpu())
        set_python_rng_state(self.rng, meta["python_rng"])
        self.step, self.warmup_from = meta["step"], meta["warmup_from"]
        return True

    def load_weights_only(self, unet_state: dict, step: int) -> None:
        self.unet.load_state_dict(unet_state)
        self.ema.load_state_dict(unet_state)
        self.step = self.warmup_from = step

    # -- one step
    def lr_at(self, step: int) -> float:
        return self.args.lr * min(1.0, (step - self.warmup_from + 1) / self.args.warmup)

    def train_step(self) -> float:
        a, dev = self.args, self.device
        idx = torch.randint(0, self.cache["mean"].shape[0], (a.batch_size,), generator=self.gen)
        mean, std = self.cache["mean"][idx].to(dev), self.cache["std"][idx].to(dev)
        latents = (mean + std * torch.randn(mean.shape, generator=self.gen).to(dev)) * self.scale
        captions, _ = draw_captions(self.cache["objects"][idx], self.cache["colors"][idx], self.cache["styles"][idx],
                                    self.rng, p_empty=0.1, with_labels=False)
        with torch.no_grad():
            cond = self.te(self.bank.ids(captions).to(dev)).last_hidden_state
        noise = torch.randn(latents.shape, generator=self.gen).to(dev)
        t = torch.randint(0, 1000, (a.batch_size,), generator=self.gen).to(dev)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = self.unet(noisy, t, cond).sample
        snr = (ab / (1 - ab)).flatten()
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for eps-prediction
        loss = (weight * (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        decay = min(a.ema, (1 + self.step - self.warmup_from) / (10 + self.step - self.warmup_from))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.unet.parameters()), 1 - decay)
        self.step += 1
        return loss.item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/minisd"), help="checkpoints and stage outputs")
    p.add_argument("--out", type=Path, default=PACKAGE_WEIGHTS, help="where the shipped weights go")
    p.add_argument("--stages", default="judge,vae,text,latents,unet",
                   help="comma list of judge,vae,text,latents,unet; 'export' alone re-exports the last UNet checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--judge-steps", type=int, default=800)
    p.add_argument("--vae-steps", type=int, default=3500)
    p.add_argument("--text-steps", type=int, default=500)
    p.add_argument("--latent-pool", type=int, default=30000)
    p.add_argument("--unet-steps", type=int, default=200_000, help="total UNet steps to reach")
    p.add_argument("--hours", type=float, default=None, help="stop the UNet stage after this long")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 on CPU, 512 on CUDA")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--export-minutes", type=float, default=30.0)
    p.add_argument("--from-scratch", action="store_true", help="ignore the shipped MiniSD weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.batch_size = args.batch_size or (512 if device.type == "cuda" else 64)
    stages = set(args.stages.split(","))
    args.workdir.mkdir(parents=True, exist_ok=True)
    out_pipe = args.out / "minisd"
    shipped = out_pipe if (out_pipe / "training_state.json").exists() and not args.from_scratch else None
    log(f"device {device}, workdir {args.workdir}, shipped weights: {shipped or 'none'}")

    from transformers import CLIPTokenizer
    from .tokenizer import build_clip_tokenizer_files
    tok_dir = args.workdir / "tokenizer"
    if not (tok_dir / "vocab.json").exists():
        if shipped:
            shutil.copytree(shipped / "tokenizer", tok_dir, dirs_exist_ok=True)
        else:
            build_clip_tokenizer_files(tok_dir)
    bank = CaptionBank(CLIPTokenizer.from_pretrained(tok_dir))

    judge_path = args.workdir / "judge.safetensors"
    if "judge" in stages and not judge_path.exists():
        if (args.out / "judge.safetensors").exists() and not args.from_scratch:
            shutil.copy(args.out / "judge.safetensors", judge_path)
        else:
            judge = train_judge(args.judge_steps, device)
            save_tensors(judge_path, judge.state_dict())
            log(f"judge on 2,000 fresh renders (seed 12345): {judge_accuracy(judge, 2000, 12345, device)}")
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(judge_path, args.out / "judge.safetensors")
    judge = None
    if judge_path.exists():
        judge = nets.Judge().to(device)
        judge.load_state_dict(load_tensors(judge_path, device))
        judge.eval()

    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel
    vae_dir = args.workdir / "vae"
    if not (vae_dir / "config.json").exists() and stages & {"vae", "unet"}:
        vae = AutoencoderKL.from_pretrained(shipped / "vae", dtype=torch.float32) if shipped else train_vae(args.vae_steps, device)
        vae.save_pretrained(vae_dir)
        if judge is not None:
            rec = lambda x: (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)  # noqa: E731
            log(f"judge on VAE reconstructions: {judge_accuracy(judge, 500, 777, device, rec)}")
    te_dir = args.workdir / "text_encoder"
    if not (te_dir / "config.json").exists() and stages & {"text", "unet"}:
        te = CLIPTextModel.from_pretrained(shipped / "text_encoder", dtype=torch.float32) if shipped else \
            train_text_encoder(args.text_steps, bank, device)
        te.save_pretrained(te_dir)
    if not stages & {"unet", "latents", "export"}:
        return
    vae = AutoencoderKL.from_pretrained(vae_dir).to(device).eval().requires_grad_(False)
    te = CLIPTextModel.from_pretrained(te_dir).to(device).eval().requires_grad_(False)

    cache_path = args.workdir / "latents.safetensors"
    if not cache_path.exists():
        save_tensors(cache_path, build_latent_cache(vae, args.latent_pool, device))
    if not stages & {"unet", "export"}:
        return
    cache = load_tensors(cache_path, device)

    run = UNetRun(args, device, vae, te, bank, cache)
    if stages == {"export"}:
        if not run.load_checkpoint():
            raise SystemExit(f"no UNet checkpoint in {run.ckpt} to export")
        stages.add("unet")
        args.unet_steps = run.step  # export without training
    if run.load_checkpoint():
        log(f"resumed UNet from full checkpoint at step {run.step}")
    elif shipped:
        from diffusers import UNet2DConditionModel
        state = json.loads((shipped / "training_state.json").read_text())
        run.load_weights_only(UNet2DConditionModel.from_pretrained(shipped / "unet", dtype=torch.float32).state_dict(),
                              state["unet_steps"])
        log(f"resumed UNet from shipped EMA weights at step {run.step} (optimizer state fresh, {args.warmup}-step warm-up)")
    log_path = args.out / "training_log.jsonl"
    start = last_ckpt = last_export = time.time()
    losses: list[float] = []
    bar = tqdm(total=args.unet_steps, initial=run.step, desc="unet")

    def export() -> None:
        state = {"unet_steps": run.step, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
                 "unet_config": nets.UNET_CONFIG, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        export_pipeline(run.ema, te, vae, tok_dir, out_pipe, state)
        if judge is not None:
            acc = evaluate_pipeline(out_pipe, judge, device)
            state["eval_36x2"] = acc
            write_json(out_pipe / "training_state.json", state)
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": run.step, "eval": acc}) + "\n")
            log(f"step {run.step}: judge on generations (36 prompts x 2, guidance 4, DDIM 25): {acc}")

    while run.step < args.unet_steps:
        losses.append(run.train_step())
        bar.update(1)
        if not math.isfinite(losses[-1]):
            raise SystemExit(f"non-finite loss at step {run.step}; last good checkpoint kept in {run.ckpt}")
        if run.step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": run.step, "loss": sum(losses[-50:]) / 50, "lr": run.lr_at(run.step),
                                    "wall": round(time.time() - start, 1)}) + "\n")
        now = time.time()
        done = args.hours is not None and now - start > args.hours * 3600
        if now - last_ckpt > args.checkpoint_minutes * 60 or done:
            run.save_checkpoint()
            last_ckpt = now
        if now - last_export > args.export_minutes * 60 or done:
            export()
            last_export = time.time()
        if done:
            break
    run.save_checkpoint()
    export()
    log(f"UNet stage stopped at step {run.step}")


if __name__ == "__main__":
    main()
