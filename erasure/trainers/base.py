"""The one training loop every method shares.

A method subclasses `Trainer`, owns its loss (`compute_loss`) and, if it needs them, a few hooks
(`setup`, `before_optimizer_step`, `extra_state`). Everything else is here, once: loading the
base model, freezing all but the preset's weights, the optimizer, bf16 autocast on CUDA,
gradient accumulation, a progress bar with the loss, a NaN/inf guard (loss, gradients and the
weights themselves), checkpoints every N steps with exact resume (weights, optimizer, every RNG,
method state), Ctrl-C stopping at a step boundary with a checkpoint, and saving the erasure files.

A checkpoint is committed as one unit (a complete folder renamed into place, its tensors' sha256
recorded), so that a run killed at any moment resumes from a checkpoint it can verify.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..config import EraseConfig
from ..erasure_files import base_tensors, hash_tensors, save_erasure, stored_dtypes
from ..errors import UserError
from ..files import (cache_home, fsync_path, human_size, load_tensors, optimizer_from_tensors, optimizer_to_tensors,
                     python_rng_state, save_tensors, set_python_rng_state, sha256_file, write_json)
from ..memory import (check_optimizer_device, enable_text_encoder_checkpointing, enable_unet_checkpointing, make_adam,
                      memory_plan, unet_params)
from ..model_ref import default_sampling, resolve_model
from ..pipelines.loading import load_pipeline, pick_device
from ..sampling import add_noise, encode_prompts
from ..selfdata import SelfData, self_generated
from ..targets import select_parameters
from ..worlds import World, world_for

CHECKPOINT_DIR = "checkpoint"
# the checkpoint before the one being committed: it exists only while a new one replaces it (or
# after a run died in that moment), and --resume falls back on it when `checkpoint` is torn
PREVIOUS_DIR = "checkpoint.prev"
# scratch folders of the commit: a checkpoint being written (new) and one being deleted (old);
# a dead run's are removed by the next commit or finish, and nothing else in the out folder is
_SCRATCH = re.compile(r"checkpoint\.(new|old)-\d+-[0-9a-f]{8}")
# settings a resumed run may change: they change no number of the training (gradient
# checkpointing recomputes the same activations, the saliency ranking is exact on either
# device, save_dtype acts on the written erasure only)
RESUME_FREE = ("steps", "device", "checkpoint_every", "gradient_checkpointing", "saliency_device", "save_dtype")


class TrainingDiverged(UserError):
    """The loss, a gradient or the trained weights became NaN/inf."""


class TrainingCancelled(UserError):
    """The progress callback asked the run to stop; no erasure was written."""


class TrainingInterrupted(UserError):
    """Ctrl-C (SIGINT) stopped the run at a step boundary, after a checkpoint of that step was
    saved: --resume continues it exactly."""
    exit_code = 130  # what a shell reports for a program ended by SIGINT (128 + 2); the CLI returns it


class _Torn(Exception):
    """A checkpoint folder that is not a complete checkpoint; the message says what is wrong."""


def _scratch_name(kind: str) -> str:
    """A name no other commit uses: the process id, for a person reading the folder, and a random part."""
    return f"{CHECKPOINT_DIR}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder by first renaming it to a scratch name: a death halfway through
    the deletion then leaves a scratch folder, never a half-deleted folder under a name that
    --resume reads."""
    if not folder.is_dir() or folder.is_symlink():
        return
    trash = folder.with_name(_scratch_name("old"))
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _clean_scratch(out: Path) -> None:
    """Remove the scratch folders a dead run left (only folders with our scratch names)."""
    for entry in out.iterdir() if out.is_dir() else ():
        if _SCRATCH.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _read_state(folder: Path) -> dict:
    """state.json of a checkpoint folder, if it parses and has its entries (raises _Torn)."""
    if not folder.is_dir():
        raise _Torn("missing")
    try:
        meta = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        raise _Torn("no state.json") from None
    except (ValueError, OSError):
        raise _Torn("state.json does not parse") from None
    if not isinstance(meta, dict) or not {"step", "config", "optimizer", "python_rng"} <= meta.keys():
        raise _Torn("state.json lacks entries")
    return meta


def _check_tensors_file(folder: Path, meta: dict) -> None:
    """Raise _Torn unless state.safetensors has the size and sha256 state.json records. A
    state.json that records neither passes unverified: reading its tensors is its test."""
    weights = folder / "state.safetensors"
    if not weights.is_file():
        raise _Torn("no state.safetensors")
    recorded = meta.get("safetensors")
    if recorded:
        size = weights.stat().st_size
        if size != recorded.get("bytes"):
            raise _Torn(f"state.safetensors is {size} bytes, state.json records {recorded.get('bytes')}")
        if sha256_file(weights) != recorded.get("sha256"):
            raise _Torn("state.safetensors does not match the sha256 in state.json")


def checkpoint_in(out_dir: str | Path) -> Path | None:
    """The checkpoint folder --resume would try first in `out_dir` (`checkpoint`, else the previous
    one), judged by its state.json alone (cheap: nothing is hashed); None if neither has one."""
    out = Path(out_dir)
    for folder in (out / CHECKPOINT_DIR, out / PREVIOUS_DIR):
        if (folder / "state.json").is_file():
            return folder
    return None


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite, in one fused pass and one device sync: the
    max-abs norm of a tensor is NaN/inf exactly when one of its values is (and, unlike the
    2-norm, never overflows on large finite values)."""
    if not tensors:
        return True
    norms = torch._foreach_norm(list(tensors), float("inf"))
    dev = norms[0].device
    return bool(torch.isfinite(torch.stack([n.float().to(dev) for n in norms])).all())


@contextlib.contextmanager
def _sigint_flag() -> Iterator[Callable[[], bool]]:
    """While the block runs, a first Ctrl-C (SIGINT) only raises a flag, which the loop reads at
    its next step boundary: it then stops with a checkpoint of a consistent state (a
    KeyboardInterrupt mid-step would leave weights and optimizer half-updated, and no checkpoint).
    A second Ctrl-C is the ordinary KeyboardInterrupt, at once. Yields the flag's reader.

    Only in the main thread (signal handlers can only be set there; the demo trains in a worker
    thread) and only where SIGINT is Python's usual KeyboardInterrupt: a program that ignores it or
    handles it itself keeps its handling. The previous handler is back when the block ends."""
    hit = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if previous is not signal.default_int_handler:
        yield lambda: False
        return

    def on_sigint(signum, frame) -> None:
        hit.set()
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C: KeyboardInterrupt at once
        # os.write, not print: the handler may run inside a write to stderr (the progress bar's),
        # which a buffered write would re-enter
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.write(sys.stderr.fileno(), b"\nerasure: Ctrl-C: stopping after this step with a checkpoint "
                                          b"(Ctrl-C again stops at once, without one)\n")

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield hit.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


# callback(step, total_steps, logs) after every optimizer step; logs holds "loss" and the method's
# own numbers. Returning False stops the run (TrainingCancelled); None or True goes on.
ProgressCallback = Callable[[int, int, dict], bool | None]


class Trainer:
    config_cls: type[EraseConfig] = EraseConfig
    # whether the method trains data parallel under a launcher (its batches drawn whole and
    # sharded, see `shard`); a method that cannot says why in `data_parallel_refusal`
    data_parallel: bool = True
    data_parallel_refusal: str = ""
    # the caches a method's setup writes (self-generated data, masks) are made by the main process
    # first and read by the others; a setup that itself trains data parallel (SFD's stage one)
    # runs in every process at once instead, and writes its cache from the main process
    setup_trains: bool = False

    def __init__(self, config: EraseConfig, pipe=None, cache_dir: str | Path | None = None,
                 data_parallel: bool | None = None) -> None:
        """`pipe`: a loaded base pipeline to train (default: load config.base_model); `cache_dir`:
        where recomputable data (self-generated images, SalUn's masks, SFD's stage one) is kept
        (default: erasure's cache, ~/.cache/erasure or $ERASURE_CACHE). `data_parallel`: train
        with every process of a launcher (`accelerate launch -m erasure train`), default when
        launched; False trains in this process alone (the benchmark gives each process its own
        (method, concept) pairs)."""
        config.check_run()  # before a 4 GB base model loads
        # data parallel: every process draws the global batch (per-process batch x processes) from
        # the same generator, keeps its rows (shard) and the gradients are averaged before each step
        self.processes = distributed.processes() if data_parallel in (None, True) else 1
        self.rank = distributed.rank() if self.processes > 1 else 0
        if self.processes > 1 and not self.data_parallel:
            raise UserError(f"{config.method} does not train data parallel ({self.data_parallel_refusal}); "
                            "run it in one process, without accelerate launch")
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_home()
        self.device = pick_device(config.device)
        check_optimizer_device(config.optimizer, self.device.type)  # before the base model loads
        self.base_path = resolve_model(config.base_model) if pipe is None else Path(getattr(pipe, "name_or_path", "") or ".")
        self.pipe = pipe if pipe is not None else load_pipeline(self.base_path, device=self.device, attention=config.attention)
        # what the base model's family knows about its concepts (erasure/worlds/)
        self.world: World = world_for(self.base_path)
        self.pipe.to(self.device)
        self.unet, self.text_encoder, self.tokenizer = self.pipe.unet, self.pipe.text_encoder, self.pipe.tokenizer
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(self.device)
        # the memory levers' "auto" resolved for this UNet's size (erasure/memory.py); looked up by
        # module name, so that a memory estimate can plan for CUDA while it runs on the CPU
        self.plan = memory_plan(config, self.device.type, unet_params(self.unet))
        # bf16: autocast, frozen weights stored in bf16, trained tensors kept in fp32 (master weights).
        # "auto" means bf16 on CUDA and fp32 elsewhere.
        self.use_bf16 = config.dtype == "bfloat16" or (config.dtype == "auto" and self.device.type == "cuda")
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)  # every random draw of the run
        self.rng = random.Random(config.seed)
        self.step = 0

        models = {"unet": self.unet, "text_encoder": self.text_encoder}
        for m in [*models.values(), self.pipe.vae]:
            m.requires_grad_(False)
        self.trainable = self.select_trainable(models)
        for p in self.trainable.values():
            p.requires_grad_(True)
        if self.use_bf16:
            for m in [*models.values(), self.pipe.vae]:
                for p in m.parameters():
                    if not p.requires_grad:
                        p.data = p.data.to(torch.bfloat16)
        base = base_tensors(self.pipe, list(self.trainable))
        self.base_hash = hash_tensors(base)
        # what "base" means for save_dtype: the dtype of each weight in the base's files, else as loaded
        self.base_dtypes = {k: v.dtype for k, v in base.items()} | stored_dtypes(self.base_path, list(self.trainable))
        del base
        if self.plan.gradient_checkpointing:  # before setup: the frozen copies it makes inherit it
            self.enable_gradient_checkpointing()
        self.optimizer = self.make_optimizer()
        self.micro_step = 0  # index of the micro-batch within the optimizer step (--grad-accum)
        self.ema_weights = {k: p.detach().clone() for k, p in self.trainable.items()} if config.ema else None
        one_first = self.processes > 1 and not self.setup_trains
        with distributed.main_first() if one_first else contextlib.nullcontext():
            self.setup()  # the main process first: it writes the caches (self-generated data, masks) the others read

    # ----------------------------------------------------------------- hooks for methods
    def select_trainable(self, models: dict[str, torch.nn.Module]) -> dict[str, torch.nn.Parameter]:
        return select_parameters(models, self.config.target)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self.adam(self.trainable.values(), self.config.lr)

    def enable_gradient_checkpointing(self) -> None:
        """Gradient checkpointing of the UNet (every method's backward passes through it: the
        trained weights are in it or, AdvUnlearn, behind it in the text encoder) and of the text
        encoder when it trains. Copies made afterwards (frozen_copy) keep it; it costs nothing
        where no gradient is taken."""
        enable_unet_checkpointing(self.unet)
        if any(k.startswith("text_encoder.") for k in self.trainable):
            enable_text_encoder_checkpointing(self.text_encoder)

    def setup(self) -> None:
        """Prepare what the loss needs (embeddings, frozen copies, data)."""

    def compute_loss(self) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def before_optimizer_step(self) -> None:
        """Edit gradients before the step (SalUn's mask, DoCo's projection)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Method state that a checkpoint must keep for an exact resume."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def manifest_extra(self) -> dict:
        """Entries the method adds to the erasure manifest (SFD: how its one-step generator samples)."""
        return {}

    # ----------------------------------------------------------------- shared helpers
    def adam(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
             weight_decay: float = 0.0) -> torch.optim.Optimizer:
        """Every optimizer a method makes (its trained weights', DoCo's discriminator, SFD's fake
        net): Adam (AdamW with weight_decay) in the implementation the memory plan names
        (--optimizer; erasure/memory.py)."""
        return make_adam(self.plan.optimizer, params, lr, betas, eps, weight_decay, self.device.type, self.processes)

    @staticmethod
    def copy_module(module: torch.nn.Module) -> torch.nn.Module:
        """copy.deepcopy of `module` whose weights and buffers are cloned by an operation, not by
        Tensor.__deepcopy__ (which reads a fake tensor's data pointer: the memory estimate's)."""
        memo: dict = {}
        for t in [*module.parameters(), *module.buffers()]:
            clone = t.detach().clone()
            memo[id(t)] = torch.nn.Parameter(clone, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else clone
        return copy.deepcopy(module, memo)

    def frozen_copy(self, module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
        """A no-grad copy of `module` as it is now (the original model θ*)."""
        frozen = self.copy_module(module).requires_grad_(False).eval()
        dtype = dtype or (torch.bfloat16 if self.use_bf16 else None)
        if dtype is not None:  # Module.to(dtype)'s cast, by .data (so fake tensors of a memory estimate cast too)
            for p in frozen.parameters():
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
            for m in frozen.modules():
                for name, b in m._buffers.items():
                    if b is not None and b.is_floating_point():
                        m._buffers[name] = b.to(dtype)
        return frozen

    def autocast(self):
        # no weight cache: autocast would otherwise keep a bf16 copy of every trained weight it
        # casts until the region ends (SFD: 3.4 GB for G and the fake net of an SD 1.x UNet);
        # recasting per use gives the same numbers
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16, cache_enabled=False)

    def embed(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        """(B, 77, D) text-encoder states of `prompts` (with gradient when the encoder trains)."""
        with self.autocast():  # bf16: a trained text encoder holds fp32 layers beside bf16 embeddings
            return encode_prompts(self.tokenizer, self.text_encoder, prompts, self.device, grad=grad)

    def forget_prompts(self, concept: str) -> list[str]:
        """The prompts that express `concept` in training (the world's, erasure/worlds/)."""
        return self.world.concept_prompts(concept, self.config.concept_prompts, seed=self.config.seed)

    def anchor_of(self, concept: str) -> str:
        """--anchor, else the world's default anchor of the concept; never the concept itself."""
        anchor = self.config.anchor.strip() or self.world.default_anchor(concept)
        if anchor.lower() == concept.strip().lower():
            raise UserError(f"--anchor: the anchor (SFD: the override '{anchor}') is the concept itself; name a "
                            "different concept for it to become, e.g. --anchor 'a person wearing clothes'")
        return anchor

    def anchored_prompts(self, concept: str) -> tuple[list[str], list[str]]:
        """Forget prompts and, row for row, the anchor prompt each one should turn into (on
        MiniSD the anchor keeps the prompt's colour and style: "a red disk" -> "a red square")."""
        forget, anchor = self.forget_prompts(concept), self.anchor_of(concept)
        return forget, self.world.anchor_prompts(forget, concept, anchor, self.config.concept_prompts)

    def retain_prompts(self, concept: str, n: int = 64) -> list[str]:
        """Prompts whose images must not change (the world's); n: world captions drawn. None
        names a concept of the run: erasing circle and square together, circle's retain captions
        would otherwise keep the squares."""
        prompts = self.world.retain_prompts(concept, self.anchor_of(concept), n=n, seed=self.config.seed + 1)
        return self.without_run_concepts(prompts)

    def without_run_concepts(self, prompts: list[str]) -> list[str]:
        """`prompts` less those that name a concept this run erases (the world's reading)."""
        return self.world.without_concepts(prompts, self.config.concepts)

    def self_data(self, prompts: list[str], count: int) -> SelfData:
        """`count` latents the untouched base model draws for `prompts` (cached; erasure/selfdata.py)."""
        cfg = self.config
        sampling = default_sampling(self.base_path)
        return self_generated(self.pipe, self.base_path, prompts, count, seed=getattr(cfg, "data_seed", 0),
                              guidance=getattr(cfg, "data_guidance", 0) or sampling["guidance_scale"],
                              steps=getattr(cfg, "data_steps", 0) or sampling["num_inference_steps"],
                              autocast=self.autocast, cache_dir=self.cache_dir / "selfdata")

    def draw_batch(self, data: SelfData, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random batch of self-generated latents and their prompt indices."""
        idx = self.randint(len(data), (size,))
        return data.latents[idx].to(self.device), data.prompt_ids[idx].to(self.device)

    def denoising_loss(self, data: SelfData, cond: torch.Tensor, size: int) -> torch.Tensor:
        """The ordinary epsilon-MSE of the trained UNet on a random batch of `data`, each latent
        under its prompt's embedding (rows of `cond`): the retain loss SalUn and DoCo share."""
        x_t, t, noise, prompt_ids = self.noised_batch(data, size)
        return F.mse_loss(self.unet(x_t, t, encoder_hidden_states=cond[prompt_ids]).sample.float(), noise)

    def noised(self, x0: torch.Tensor, generator: torch.Generator | None = None,
               t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t, noise) with t uniform over the training schedule, or over [lo, hi) = t_range
        (SFD): the standard denoising draw (from the run's generator unless another is given)."""
        g = generator or self.generator
        lo, hi = t_range or (0, len(self.alphas_cumprod))
        t = torch.randint(lo, hi, (len(x0),), generator=g).to(self.device)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        return add_noise(x0, noise, self.alphas_cumprod, t), t, noise

    def noised_rows(self, x0: torch.Tensor, t_range: tuple[int, int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`noised` for this process's rows `x0` of a global batch (SFD's generator samples, made
        from sharded draws): t and noise are drawn for the global batch and this process's rows
        kept, so the run draws what one process with the global batch draws."""
        if self.processes == 1:
            return self.noised(x0, t_range=t_range)
        lo, hi = t_range or (0, len(self.alphas_cumprod))
        rows = self.global_batch(len(x0))
        t = torch.randint(lo, hi, (rows,), generator=self.generator)
        noise = torch.randn((rows, *x0.shape[1:]), generator=self.generator)
        t, noise = (x.to(self.device) for x in self.shard(t, noise))
        return add_noise(x0, noise, self.alphas_cumprod, t), t, noise

    def global_batch(self, per_process: int) -> int:
        """The batch every process draws: `per_process` rows for each process."""
        return per_process * self.processes

    def shard(self, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """This process's rows of a batch drawn whole (global_batch) by every process: process r
        keeps rows [r b, (r + 1) b). The mean loss over its rows, averaged across processes with
        the gradients, is the global batch's mean loss. The identity in one process."""
        if self.processes == 1:
            return batch
        b = len(batch[0]) // self.processes
        return tuple(x[self.rank * b:(self.rank + 1) * b] for x in batch)

    def noised_batch(self, data: SelfData, size: int) -> tuple[torch.Tensor, ...]:
        """(x_t, t, noise, prompt ids) of `size` rows per process: a random batch of `data`
        (draw_batch) noised at uniform t (noised), drawn whole and sharded."""
        x0, prompt_ids = self.draw_batch(data, self.global_batch(size))
        x_t, t, noise = self.noised(x0)
        return self.shard(x_t, t, noise, prompt_ids)

    def randint(self, high: int, size: tuple[int, ...] = ()) -> torch.Tensor:
        return torch.randint(0, high, size, generator=self.generator)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator).to(self.device)

    # ----------------------------------------------------------------- checkpoints
    @staticmethod
    def network_state(prefix: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """A method's second network and its optimizer as checkpoint tensors (for `extra_state`:
        DoCo's discriminator, SFD's fake score net), keyed "<prefix>.<weight>" / "<prefix>_optim...."."""
        opt_tensors, _ = optimizer_to_tensors(optimizer)
        return {**{f"{prefix}.{k}": v for k, v in module.state_dict().items()},
                **{f"{prefix}_{k}": v for k, v in opt_tensors.items()}}

    @staticmethod
    def load_network_state(prefix: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           tensors: dict[str, torch.Tensor]) -> None:
        """The inverse of `network_state` (for `load_extra_state`)."""
        n = len(prefix) + 1
        module.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")})
        opt = {k[n:]: v for k, v in tensors.items() if k.startswith(f"{prefix}_optim.")}
        # its param groups as they are now (a sharded optimizer's own state_dict needs a gather first)
        live = torch.optim.Optimizer.state_dict(optimizer) if hasattr(optimizer, "consolidate_state_dict") \
            else optimizer.state_dict()
        optimizer_from_tensors(optimizer, opt, {"param_groups": live["param_groups"]})

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer the trainer holds (the trained weights', and a method's own: DoCo's
        discriminator, SFD's fake score network)."""
        return [v for v in vars(self).values() if isinstance(v, torch.optim.Optimizer)]

    def save_checkpoint(self, out_dir: Path) -> None:
        """Every process holds the same weights, optimizer and generators: the main one writes them
        (a sharded optimizer's states are first gathered to it, which every process takes part in).

        A checkpoint is committed as one unit, so that a run killed at any moment leaves a
        checkpoint --resume can trust: both files go into a new scratch folder, state.json
        recording the size and sha256 of state.safetensors, flushed to disk; then the old
        `checkpoint` becomes `checkpoint.prev`, the new folder becomes `checkpoint` (each an
        atomic rename) and the previous one is deleted. NaN/inf weights are refused before
        anything is written: they must never replace a good checkpoint."""
        self.check_weights(out_dir, "before a checkpoint")
        for optimizer in self.optimizers():
            if hasattr(optimizer, "consolidate_state_dict"):  # --optimizer adam-sharded under a launcher
                optimizer.consolidate_state_dict(to=0)
        if self.rank != 0:
            return
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        new = out_dir / _scratch_name("new")
        tensors = {f"param.{k}": v for k, v in self.trainable.items()}
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        tensors |= opt_tensors
        tensors |= {f"extra.{k}": v for k, v in self.extra_state().items()}
        if self.ema_weights is not None:
            tensors |= {f"ema.{k}": v for k, v in self.ema_weights.items()}
        tensors["rng.generator"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        weights = new / "state.safetensors"
        save_tensors(weights, tensors)
        fsync_path(weights)
        # the sha256 of the file as read back from the disk: what --resume will compare
        record = {"bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
        write_json(new / "state.json", {"step": self.step, "config": self.config.to_dict(), "optimizer": opt_meta,
                                        "python_rng": python_rng_state(self.rng), "processes": self.processes,
                                        "safetensors": record})
        fsync_path(new / "state.json")
        fsync_path(new)
        ckpt = self.commit_checkpoint(out_dir, new)
        # its size on the console: a full-size one (SD 1.x UNet trained, with its optimizer) is ~14 GB
        tqdm.write(f"checkpoint: {human_size(record['bytes'])} at step {self.step} ({ckpt / 'state.safetensors'})")

    @staticmethod
    def commit_checkpoint(out_dir: Path, new: Path) -> Path:
        """Make the complete checkpoint folder `new` the out folder's `checkpoint`. At every moment
        `checkpoint` or `checkpoint.prev` holds a complete checkpoint: a `checkpoint.prev` already
        there (a dead run's, or the one a torn `checkpoint` fell back on) is the one kept while
        `checkpoint` is replaced; otherwise the current `checkpoint` becomes it."""
        ckpt, prev = out_dir / CHECKPOINT_DIR, out_dir / PREVIOUS_DIR
        if prev.is_dir():
            _discard(ckpt)
        elif ckpt.is_dir():
            os.rename(ckpt, prev)
        os.rename(new, ckpt)
        fsync_path(out_dir)
        _discard(prev)
        _clean_scratch(out_dir)
        return ckpt

    @staticmethod
    def remove_checkpoints(out_dir: Path) -> None:
        """After the erasure is written: the checkpoint, its previous one and any scratch folders go."""
        _discard(out_dir / CHECKPOINT_DIR)
        _discard(out_dir / PREVIOUS_DIR)
        _clean_scratch(out_dir)

    def check_settings(self, meta: dict, folder: Path) -> None:
        """Refuse a checkpoint made with settings that change the training's numbers."""
        # a setting added since the checkpoint was made counts as its default
        defaults = {f.name: f.default for f in dataclasses.fields(self.config) if f.default is not dataclasses.MISSING}
        saved = {**{k: v for k, v in defaults.items() if k not in meta["config"]}, **meta["config"]}
        mine = {k: v for k, v in self.config.to_dict().items() if k not in RESUME_FREE}
        theirs = {k: v for k, v in saved.items() if k not in RESUME_FREE}
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise UserError(f"--resume: the checkpoint in {folder} was made with different settings ({', '.join(diff)}); "
                            "use the same settings or a new --out")
        if meta.get("processes", 1) != self.processes:  # the global batch would change
            raise UserError(f"--resume: the checkpoint in {folder} was made by {meta.get('processes', 1)} process(es), "
                            f"this run has {self.processes}; resume with --num_processes {meta.get('processes', 1)}")

    def load_checkpoint(self, out_dir: Path) -> None:
        """Resume from `checkpoint`, verified (its state.json parses, state.safetensors has the
        recorded size and sha256); if it is missing or torn (a run died while committing one, or
        the disk lost it), from `checkpoint.prev`, with a warning naming its step."""
        out_dir = Path(out_dir)
        ckpt, prev = out_dir / CHECKPOINT_DIR, out_dir / PREVIOUS_DIR
        if not ckpt.exists() and not prev.exists():
            raise UserError(f"--resume: no checkpoint in {ckpt}; run without --resume to start fresh")
        problems = []
        for folder in (ckpt, prev):
            if folder is prev and not prev.exists():
                continue
            try:
                meta = _read_state(folder)
                self.check_settings(meta, folder)
                _check_tensors_file(folder, meta)
                try:
                    tensors = load_tensors(folder / "state.safetensors", self.device)
                except Exception as e:  # an unverified (older) checkpoint's torn file fails here
                    if meta.get("safetensors"):
                        raise
                    raise _Torn(f"state.safetensors does not read ({str(e).splitlines()[0] if str(e) else e!r})")
                break
            except _Torn as e:
                problems.append(f"{folder}: {e}")
        else:
            raise UserError(f"--resume: no usable checkpoint in {out_dir}: {'; '.join(problems)}; "
                            "run without --resume to start again (or use a new --out)")
        if problems and self.rank == 0:
            tqdm.write(f"erasure: warning: {problems[0]}; resuming from the previous checkpoint, {folder}, "
                       f"at step {meta['step']}", file=sys.stderr)
        with torch.no_grad():
            for k, p in self.trainable.items():
                p.copy_(tensors[f"param.{k}"])
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        if self.ema_weights is not None:
            self.ema_weights = {k: tensors[f"ema.{k}"].clone() for k in self.trainable}
        self.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
        self.generator.set_state(tensors["rng.generator"].cpu())
        torch.set_rng_state(tensors["rng.torch"].cpu())
        set_python_rng_state(self.rng, meta["python_rng"])
        self.step = meta["step"]

    # ----------------------------------------------------------------- the loop
    def check_loss(self, loss: torch.Tensor, out: Path) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {self.step}; stopped. The last good checkpoint is in "
                f"{out / CHECKPOINT_DIR} (if any): lower --lr or use --dtype float32, then --resume")

    def accumulate_gradients(self, out: Path | None, read_loss: bool = True) -> tuple[float, dict[str, float]]:
        """One optimizer step's gradients: `grad_accum` micro-batches of compute_loss, each
        backward scaled by 1 / grad_accum, so the step is on their mean. Returns the mean loss
        and the last micro-batch's logs. `self.micro_step` says which micro-batch runs (DoCo
        steps its discriminator on the last). SFD overrides it (two updates per step).
        `read_loss=False` neither checks nor reads the loss back (the memory estimate's fake
        tensors have no values; the mean loss returned is then 0)."""
        cfg = self.config
        logs: dict[str, float] = {}
        total = 0.0
        for self.micro_step in range(cfg.grad_accum):
            with self.autocast():
                result = self.compute_loss()
            loss, logs = result if isinstance(result, tuple) else (result, {})
            if read_loss:
                self.check_loss(loss, out)
            if loss.requires_grad:  # a method that sets .grad itself (DoCo) returns a detached loss
                (loss / cfg.grad_accum).backward()
            if read_loss:
                total += loss.item() / cfg.grad_accum
        self.micro_step = 0
        return total, logs

    def weights_finite(self) -> bool:
        """Whether every trained weight (and its moving average) is finite: one fused pass."""
        tensors = [p.detach() for p in self.trainable.values()]
        if self.ema_weights is not None:
            tensors += list(self.ema_weights.values())
        return _all_finite(tensors)

    def check_weights(self, out: Path, when: str) -> None:
        """Stop with TrainingDiverged if a weight became NaN/inf. The loss and gradient guards do
        not see it: one step with a finite gradient and a too-large --lr (inf, say) overflows the
        weights, and the last step's overflow would otherwise be saved as the erasure."""
        if self.weights_finite():
            return
        last = checkpoint_in(out) if out is not None else None
        if last is None:
            where, fix = "none was made", "lower --lr and run again"
        else:
            try:
                step = f" (step {json.loads((last / 'state.json').read_text())['step']})"
            except (OSError, ValueError, KeyError, TypeError):
                step = ""
            where, fix = f"it is {last}{step}", "lower --lr, then --resume"
        raise TrainingDiverged(f"the trained weights became NaN/inf at step {self.step} of {self.config.steps} "
                               f"({when}); stopped, and nothing was saved over the last good checkpoint: {where}; "
                               f"{fix}")

    def train(self, out_dir: str | Path, resume: bool = False, stop_after: int | None = None,
              callback: ProgressCallback | None = None) -> Path:
        """Train `config.steps` optimizer steps and write the erasure into `out_dir`.
        `stop_after` ends the run early after that many steps (checkpointing first), which is
        how tests simulate an interrupted run. `callback(step, total, logs)` is called after every
        step (a UI's progress bar); when it returns False the run stops at once with
        TrainingCancelled and writes nothing more (checkpoints already saved stay).

        Ctrl-C (SIGINT), when this runs in the main thread, stops the run at the next step
        boundary: a checkpoint of that step is saved and TrainingInterrupted raised (the CLI: one
        line, exit code 130); a second Ctrl-C stops at once. Under a launcher every process reads
        its own Ctrl-C and they agree at each step (one tiny all-reduce), so all stop at the same
        step; a launcher that kills its processes on Ctrl-C before they reach it leaves the last
        periodic checkpoint instead."""
        out = Path(out_dir)
        cfg = self.config
        with _sigint_flag() as sigint:
            if resume:
                self.load_checkpoint(out)
            with tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.method} '{cfg.concept}'",
                      dynamic_ncols=True) as bar:  # closed before an error's message is printed
                while self.step < cfg.steps:
                    self.optimizer.zero_grad(set_to_none=True)
                    total, logs = self.accumulate_gradients(out)
                    if self.processes > 1:
                        self.average_gradients()
                        total = distributed.mean_value(total)
                    self.before_optimizer_step()
                    if not _all_finite([p.grad for p in self.trainable.values() if p.grad is not None]):
                        raise TrainingDiverged(f"a gradient became NaN/inf at step {self.step}; stopped. Lower --lr, "
                                               f"then --resume from {out / CHECKPOINT_DIR}")
                    if cfg.lr_schedule == "cosine":  # a function of the step, so resume needs no scheduler state
                        for group in self.optimizer.param_groups:
                            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * self.step / cfg.steps))
                    self.optimizer.step()
                    if self.ema_weights is not None:
                        with torch.no_grad():
                            for k, p in self.trainable.items():
                                self.ema_weights[k].lerp_(p.detach(), 1 - cfg.ema)
                    self.check_weights(out, "after its optimizer step")
                    self.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4g}", **{k: f"{v:.3g}" for k, v in logs.items()})
                    if callback is not None and callback(self.step, cfg.steps, {"loss": total, **logs}) is False:
                        raise TrainingCancelled(f"training cancelled at step {self.step} of {cfg.steps}")
                    stop = stop_after is not None and self.step >= stop_after
                    # at the last step a Ctrl-C is moot: writing the erasure is as quick as a checkpoint
                    halt = self.step < cfg.steps and self.anyone(sigint())
                    if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps) \
                            or stop or halt:
                        self.save_checkpoint(out)
                        distributed.wait() if self.processes > 1 else None
                    if stop:
                        return out
                    if halt:
                        raise TrainingInterrupted(f"interrupted at step {self.step} of {cfg.steps}; checkpoint saved "
                                                  f"in {out / CHECKPOINT_DIR}: resume with --resume")
            if self.rank == 0:
                self.save(out)
                self.remove_checkpoints(out)
            distributed.wait() if self.processes > 1 else None  # the erasure is complete when any process returns
        return out

    def anyone(self, flag: bool) -> bool:
        """Whether `flag` is set in any process (every process then takes the same branch)."""
        if self.processes == 1:
            return flag
        return distributed.mean_value(1.0 if flag else 0.0) > 0

    def average_gradients(self) -> None:
        """The global batch's gradient: each trained tensor's .grad averaged across processes.
        Done here, after the micro-batches, rather than by wrapping the network in DDP: the
        methods call the trained network several times per step, some of them without grad."""
        distributed.mean_([p.grad for p in self.trainable.values() if p.grad is not None])

    def save(self, out_dir: str | Path) -> Path:
        if self.ema_weights is not None:  # the saved model is the average; the live one becomes it too
            with torch.no_grad():
                for k, p in self.trainable.items():
                    p.copy_(self.ema_weights[k])
        self.check_weights(Path(out_dir), "before writing the erasure")  # a NaN erasure is never written
        tensors = {k: v.detach() for k, v in self.trainable.items()}
        extra = self.manifest_extra()
        if self.processes > 1:
            extra["data_parallel"] = {"processes": self.processes}
        return save_erasure(out_dir, self.config, tensors, self.base_hash, self.base_path, extra=extra,
                            base_dtypes=self.base_dtypes)
