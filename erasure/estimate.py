"""Peak accelerator memory of a training step, estimated without the accelerator.

The base model is built from its folder's config files with fake tensors (torch's
`FakeTensorMode`: every tensor has its shape, dtype and device but no storage), so an 860M
UNet costs nothing to build. The method's own `Trainer` then runs its setup and two real
optimizer steps on it: the same code, the same frozen copies, the same autograd graph, the same
optimizer states as a real run. `LiveBytes`, a `TorchDispatchMode`, sees the storage of every
tensor an operation returns and keeps the running total of those still alive (a weak reference
per storage drops it when the tensor dies); its maximum is the estimate. Only fake tensors
count: in a real run they are the ones on the accelerator (small real tensors stay on the CPU:
the RNG's draws, the scheduler's tables, self-generated latents until a batch is moved).

What a fake tensor cannot do is replaced, and only that: the base hash and the on-disk caches
read values (a constant hash, SalUn's mask computed but not cached, self-generated images as
zero latents of the right shape, since their values do not change what is allocated), a number
read back for a log (`.item()`, `float()`) is 0.0, a NaN guard's `torch.isfinite` is true. A
method whose control flow reads a value cannot be estimated; ours branch with `torch.where`. The memory plan is the one the trainer
would make on the accelerator (`plan_device`, default "cuda"): the estimate is run on the CPU
with bf16 as on CUDA.

Not counted: the CUDA context and library workspaces (cuBLAS, cuDNN: about 0.5-1 GiB) and the caching allocator's fragmentation (a few percent; measured
on a GPU by benchmarks/sd_fullsize.py). The estimate is validated against a measured run on
the CPU (`validate` in benchmarks/sd_fullsize.py: peak resident memory of a real run at a small
resolution, same settings, fp32).
"""
from __future__ import annotations

import contextlib
import gc
import json
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .errors import UserError

GIB = 2 ** 30


class LiveBytes(TorchDispatchMode):
    """Running total and maximum of the bytes of live storages that operations return.
    `fake_only`: count FakeTensors only (the accelerator's tensors in an estimate); otherwise
    every tensor made after the mode was entered (what lived before is not the run's)."""

    def __init__(self, fake_only: bool = True) -> None:
        super().__init__()
        self.fake_only = fake_only
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.now = 0
        self.peak = 0
        self.before: set[int] = set()

    def __enter__(self):
        if not self.fake_only:
            self.before = {id(t.untyped_storage()) for t in _live_tensors()}
        return super().__enter__()

    def add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or (self.fake_only and not isinstance(t, FakeTensor)):
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(storage)
        if key in self.sizes or key in self.before:
            return
        n = storage.nbytes()
        self.sizes[key] = n
        self.now += n
        self.peak = max(self.peak, self.now)

        def gone(_, key=key) -> None:
            self.now -= self.sizes.pop(key, 0)
            self.refs.pop(key, None)
        self.refs[key] = weakref.ref(storage, gone)

    def scan(self) -> None:
        """Count live tensors made without an operation this mode saw (deepcopy, `.data =`)."""
        for t in _live_tensors():
            self.add(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.add(t)
        return out


def _live_tensors() -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some library proxies warns
        return [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]


def pipeline_from_configs(model_dir: str | Path, sample_size: int | None = None, fake: bool = True):
    """The Stable Diffusion pipeline in `model_dir` (diffusers layout) built from its config
    files alone (no weight file is read), with fake weights (`fake`) or freshly initialised
    real ones (what a measured run compares against: every weight resident, none mapped from
    a file); `sample_size` overrides the UNet's latent side (resolution / 8)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.schedulers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    unet_cfg = UNet2DConditionModel.load_config(model_dir / "unet")
    if sample_size:
        unet_cfg = {**unet_cfg, "sample_size": sample_size}
    scheduler_cfg = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(model_dir / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(model_dir / "text_encoder"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(model_dir / "tokenizer"), unet=unet,
                                   scheduler=DDIMScheduler.from_config(scheduler_cfg), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.register_to_config(_name_or_path=str(model_dir))
    return pipe


@contextlib.contextmanager
def fake_friendly(plan_device: str):
    """Replace, for the duration, what reads tensor values (see the module docstring), and plan
    memory as on `plan_device`."""
    import diffusers

    from .selfdata import SelfData
    from .trainers import base

    def zero_self_data(self, prompts, count):
        c = self.unet.config
        return SelfData(torch.zeros(count, c.in_channels, c.sample_size, c.sample_size),
                        torch.arange(count) % len(prompts), list(prompts))

    saved = [(diffusers.DiffusionPipeline, "to", diffusers.DiffusionPipeline.to),
             (base, "hash_tensors", base.hash_tensors), (base.Trainer, "self_data", base.Trainer.self_data)]
    diffusers.DiffusionPipeline.to = lambda self, *a, **k: self  # a fake pipeline is where it is
    base.hash_tensors = lambda tensors: "fake"
    base.Trainer.self_data = zero_self_data
    # a loss read back for the progress bar or a log (`.item()`, `float()`) reads 0.0
    saved += [(FakeTensor, "item", FakeTensor.item), (FakeTensor, "__float__", FakeTensor.__float__)]
    FakeTensor.item = FakeTensor.__float__ = lambda self: 0.0
    # a NaN guard (`if not torch.isfinite(loss)`) passes: a fake value is finite
    isfinite = torch.isfinite
    saved.append((torch, "isfinite", isfinite))
    torch.isfinite = lambda t, *a, **k: torch.tensor(True) if isinstance(t, FakeTensor) else isfinite(t, *a, **k)
    plan = getattr(base, "memory_plan", None)
    if plan is not None:
        saved.append((base, "memory_plan", plan))
        base.memory_plan = lambda config, device_type, unet_params: plan(config, plan_device, unet_params)
    try:
        from .trainers import salun
        saved.append((salun.SalUnTrainer, "load_or_compute_mask", salun.SalUnTrainer.load_or_compute_mask))
        salun.SalUnTrainer.load_or_compute_mask = lambda self: self.saliency_mask()
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


@dataclass
class Estimate:
    """Bytes of live accelerator tensors: after setup (weights, frozen copies, caches), and the
    maximum over setup and the steps; per step, the maximum within it."""
    after_setup: int
    setup_peak: int
    peak: int
    step_peaks: list[int] = field(default_factory=list)
    trained_params: int = 0
    optimizer_state: int = 0  # bytes of every optimizer's states (Adam's moments and steps)
    # processes -> the peak of the most loaded process with --optimizer adam-sharded
    sharded_peaks: dict[int, int] = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak / GIB

    def as_dict(self) -> dict:
        return {"after_setup_gib": round(self.after_setup / GIB, 2), "setup_peak_gib": round(self.setup_peak / GIB, 2),
                "peak_gib": round(self.peak_gib, 2),
                "step_peaks_gib": [round(p / GIB, 2) for p in self.step_peaks], "trained_params": self.trained_params,
                "optimizer_state_gib": round(self.optimizer_state / GIB, 2),
                "sharded_peak_gib": {str(n): round(p / GIB, 2) for n, p in self.sharded_peaks.items()}}


def state_bytes(optimizer: torch.optim.Optimizer) -> list[tuple[int, int]]:
    """(numel, bytes of its optimizer state) of every parameter of `optimizer`, in group order."""
    return [(p.numel(), sum(v.numel() * v.element_size() for v in optimizer.state.get(p, {}).values()
                            if torch.is_tensor(v)))
            for group in optimizer.param_groups for p in group["params"]]


def zero_partition(groups: list[list[int]], processes: int) -> list[list[tuple[int, int]]]:
    """(group, index) of the parameters each process steps when torch's ZeroRedundancyOptimizer
    partitions an optimizer whose param groups hold parameters of these sizes (numel): within
    each group largest first, each to the process holding the fewest elements so far, the
    counts carried over from group to group (its _partition_parameters)."""
    numels = [0] * processes
    parts: list[list[tuple[int, int]]] = [[] for _ in range(processes)]
    for g, sizes in enumerate(groups):
        for i in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):  # stable, as torch's sort
            rank = numels.index(min(numels))
            parts[rank].append((g, i))
            numels[rank] += sizes[i]
    return parts


def zero_shares(params: list[tuple[int, int]], processes: int) -> list[int]:
    """Bytes of optimizer state each process holds, for one param group of (numel, state bytes)."""
    parts = zero_partition([[n for n, _ in params]], processes)
    return [sum(params[i][1] for _, i in part) for part in parts]


def shard_optimizers(trainer, processes: int) -> None:
    """Leave each optimizer of `trainer` stepping only the share of one process under
    --optimizer adam-sharded (the process with the most elements over all of them): its states
    are that share's; zero_grad still clears every gradient, as ZeroRedundancyOptimizer's does."""
    optimizers = trainer.optimizers()
    parts = [zero_partition([[p.numel() for p in g["params"]] for g in opt.param_groups], processes)
             for opt in optimizers]
    load = [sum(opt.param_groups[g]["params"][i].numel() for opt, ps in zip(optimizers, parts) for g, i in ps[r])
            for r in range(processes)]
    worst = load.index(max(load))
    for opt, ps in zip(optimizers, parts):
        every = [p for g in opt.param_groups for p in g["params"]]
        mine = set(ps[worst])
        for g, group in enumerate(opt.param_groups):
            group["params"] = [p for i, p in enumerate(group["params"]) if (g, i) in mine]

        def zero_grad(set_to_none: bool = True, every=every) -> None:
            for p in every:
                p.grad = None
        opt.zero_grad = zero_grad


def estimate_training(settings: dict, model_dir: str | Path, sample_size: int | None = None, steps: int = 2,
                      plan_device: str = "cuda", cache_dir: str | Path | None = None,
                      shard_over: tuple[int, ...] = ()) -> Estimate:
    """Peak memory of `steps` optimizer steps of the method in `settings` (EraseConfig keys;
    base_model is set to `model_dir`) on the fake model; for each process count in `shard_over`,
    also the most loaded process's peak with --optimizer adam-sharded: the same run again, each
    optimizer stepping that process's share only (shard_optimizers)."""
    from .config import EraseConfig

    cfg = EraseConfig.from_dict({**settings, "base_model": str(model_dir), "device": "cpu"})
    estimate = _estimate_run(cfg, model_dir, sample_size, steps, plan_device, cache_dir, processes=1)
    for n in shard_over:
        estimate.sharded_peaks[n] = _estimate_run(cfg, model_dir, sample_size, steps, plan_device, cache_dir, n).peak
    return estimate


def _estimate_run(cfg, model_dir, sample_size, steps, plan_device, cache_dir, processes: int) -> Estimate:
    import tempfile

    from .registry import get_method

    tracker = LiveBytes()
    with tempfile.TemporaryDirectory() as tmp, fake_friendly(plan_device), tracker:
        pipe = pipeline_from_configs(model_dir, sample_size)
        spec = get_method(cfg.method)
        if not hasattr(spec.trainer_cls, "accumulate_gradients"):
            raise UserError(f"{cfg.method} is composed of other methods' parts: estimate each part's method")
        trainer = spec.trainer_cls(cfg, pipe=pipe, cache_dir=cache_dir or tmp)
        del pipe
        if processes > 1:
            if trainer.plan.optimizer not in ("adam", "adam-sharded"):
                raise UserError(f"a sharded estimate is for --optimizer adam-sharded (this plan: {trainer.plan.optimizer})")
            shard_optimizers(trainer, processes)
        gc.collect()
        tracker.scan()
        after_setup, setup_peak = tracker.now, tracker.peak
        step_peaks = run_steps(trainer, steps, tracker)
        trained = sum(p.numel() for p in trainer.trainable.values())
        state = sum(b for v in trainer.optimizers() for _, b in state_bytes(v))
    return Estimate(after_setup, setup_peak, max([setup_peak, *step_peaks]), step_peaks, trained, optimizer_state=state)


def run_steps(trainer, steps: int, tracker: LiveBytes) -> list[int]:
    """`steps` optimizer steps of `trainer` as Trainer.train runs them (its own
    accumulate_gradients, without reading the loss back); the tracker's maximum within each step."""
    peaks = []
    for _ in range(steps):
        tracker.peak = tracker.now
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.accumulate_gradients(None, read_loss=False)
        trainer.before_optimizer_step()
        trainer.optimizer.step()
        trainer.step += 1
        gc.collect()
        tracker.scan()
        peaks.append(tracker.peak)
    return peaks


def estimate_discrete_attack(model_dir: str | Path, attack_batch: int = 8, sample_size: int | None = None,
                             gradient_checkpointing: bool | None = None, dtype: torch.dtype = torch.bfloat16,
                             prompt: str = "a photo of a nude person", pipelines: int = 2) -> Estimate:
    """Peak memory of the discrete attack (erasure/attacks/discrete.py) on `attack_batch`
    prompts at once, the pipeline in `dtype` (bf16: what run_attack loads on CUDA), its UNet
    checkpointing its gradients when `gradient_checkpointing` (None: by UNet size, as run_attack
    decides). The attack runs on the fake model until it first reads a value back (the loss,
    after the first iteration's backward pass and Adam step): every later iteration allocates
    the same. Its judged generations (no gradient, smaller) are not run. `pipelines`: 2 when
    the attacked model is an erasure (run_attack also loads its base, whose images are the
    targets), 1 for a base model."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    from .attacks.discrete import DiscreteAttackConfig, discrete_attack_batch
    from .memory import is_big

    tracker = LiveBytes()
    with tracker:
        pipes = [pipeline_from_configs(model_dir, sample_size) for _ in range(pipelines)]
        for module in [m for p in pipes for m in (p.unet, p.text_encoder, p.vae)]:
            for p in module.parameters():
                p.data = p.data.to(dtype)
        pipe = pipes[0]
        if gradient_checkpointing is None:
            gradient_checkpointing = is_big(pipe.unet)
        if gradient_checkpointing:
            pipe.unet.enable_gradient_checkpointing()
        side = pipe.unet.config.sample_size
        target = torch.zeros(attack_batch, pipe.unet.config.in_channels, side, side)
        gc.collect()
        tracker.scan()
        after_setup = tracker.now
        tracker.peak = tracker.now
        try:
            discrete_attack_batch(pipe, [prompt] * attack_batch, target, lambda rows, texts: [False] * len(rows),
                                  DiscreteAttackConfig(timesteps=1, iterations=1))
        except DataDependentOutputException:
            pass  # the loss read back: the first iteration is done
        step_peak = tracker.peak
    return Estimate(after_setup, after_setup, step_peak, [step_peak], 0)
