"""Memory levers of training, each a setting with a default chosen by the model's size.

A Stable Diffusion 1.x/2.x UNet (860M / 865M parameters) is "big": every method must fit one
24 GB GPU. MiniSD and the tiny test models are small and keep the behaviour they always had,
bit for bit. The levers, all resolved once per run by `memory_plan` (the one place a default
is decided):

  gradient_checkpointing  recompute activations in the backward pass instead of keeping them
                          (diffusers' enable_gradient_checkpointing, transformers' activation
                          checkpointing): the same numbers, less memory, about a third more
                          time. auto: on for a big UNet.
  optimizer               adam (torch's Adam/AdamW, the papers'); adam8bit (bitsandbytes'
                          block-wise 8-bit Adam, Dettmers et al., ICLR 2022: 2 bytes of state
                          per weight instead of 8, runs on CPU and CUDA); adam-offload (torchao's
                          CPUOffloadOptimizer: the state and the step on the CPU, CUDA only);
                          adam-sharded (torch's Adam, its state sharded across the processes of
                          a launcher by torch's ZeroRedundancyOptimizer, ZeRO stage 1, Rajbhandari
                          et al., SC 2020: each process keeps the moments of about 1/N of the
                          weights, steps them and broadcasts them; the same numbers as adam; in
                          one process it is adam). auto: adam.
  saliency_device         where SalUn ranks the |gradient| of every UNet weight (torch.kthvalue
                          over ~860M numbers): cpu for a big UNet on CUDA (the ranking's
                          workspace is several GB on a GPU), else the training device.

Bytes per trained weight for the optimizer alone: adam 4 (grad) + 8 (two moments); adam8bit
4 + 2; adam-offload 4 on the GPU (the moments, a host copy of the weights and of the gradients,
16 bytes, in pinned CPU memory); adam-sharded 4 + 8/N with N processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError, parse_bool

BIG_UNET_PARAMS = 300_000_000
OPTIMIZERS = ("adam", "adam8bit", "adam-offload", "adam-sharded")
SALIENCY_DEVICES = ("cpu", "device")
CHECKPOINTING_WORDS = ("auto", "true", "false")


def unet_params(unet: torch.nn.Module) -> int:
    return sum(p.numel() for p in unet.parameters())


def is_big(unet: torch.nn.Module) -> bool:
    """A UNet of Stable Diffusion's size (over BIG_UNET_PARAMS parameters)."""
    return unet_params(unet) > BIG_UNET_PARAMS


@dataclass(frozen=True)
class MemoryPlan:
    gradient_checkpointing: bool
    optimizer: str        # "adam" | "adam8bit" | "adam-offload"
    saliency_device: str  # "cpu" | "device"


def memory_plan(config, device_type: str, unet_params: int) -> MemoryPlan:
    """Every "auto" lever of `config` resolved for a UNet of `unet_params` parameters trained on
    a `device_type` ("cuda", "cpu", ...) device; explicit settings are kept as they are."""
    big = unet_params > BIG_UNET_PARAMS
    checkpointing = getattr(config, "gradient_checkpointing", "auto")
    optimizer = getattr(config, "optimizer", "auto")
    saliency = getattr(config, "saliency_device", "auto")
    return MemoryPlan(
        gradient_checkpointing=big if checkpointing == "auto" else checkpointing == "true",
        # the papers' Adam: this is the one place the default is decided
        optimizer="adam" if optimizer == "auto" else optimizer,
        saliency_device=("cpu" if big and device_type == "cuda" else "device") if saliency == "auto" else saliency,
    )


def checkpointing_word(value, name: str = "gradient_checkpointing") -> str:
    """auto / true / false from a setting's value (a bool, or a CLI word: yes, on, 0, ...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    word = str(value).strip().lower()
    if word == "auto":
        return word
    try:
        return "true" if parse_bool(word, name) else "false"
    except UserError:
        raise UserError(f"--{name.replace('_', '-')} takes auto, true or false (got '{value}')") from None


# ------------------------------------------------------------------------------ gradient checkpointing
def enable_unet_checkpointing(unet: torch.nn.Module) -> None:
    """diffusers' gradient checkpointing (non-reentrant torch.utils.checkpoint per block); it
    acts whenever grad is enabled, in train or eval mode."""
    unet.enable_gradient_checkpointing()


def enable_text_encoder_checkpointing(text_encoder: torch.nn.Module) -> None:
    """transformers' activation checkpointing of each encoder layer, non-reentrant (so the
    frozen token embeddings need no requires_grad hook, which is removed again). transformers
    checkpoints a layer only while the layer is in training mode: only the layers' own flag is
    set, their children (attention dropout) stay in eval mode, so the outputs do not change."""
    kwargs = {"use_reentrant": False}
    if hasattr(text_encoder, "activation_checkpointing_enable"):  # transformers >= 5
        text_encoder.activation_checkpointing_enable(kwargs)
    else:
        text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(text_encoder, "_require_grads_hook", None) is not None:
        text_encoder.disable_input_require_grads()
    for module in text_encoder.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True


# ------------------------------------------------------------------------------ optimizers
class AdamWithoutFirstMoment(torch.optim.Optimizer):
    """Adam with betas (0, beta2), keeping no first-moment buffer.

    With beta1 = 0 Adam's first moment m_t = beta1 m_{t-1} + (1 - beta1) g_t is the step's own
    gradient and its bias correction is 1, so the update is p -= lr g_t / (sqrt(v_t / (1 -
    beta2^t)) + eps) with v_t = beta2 v_{t-1} + (1 - beta2) g_t^2: v_t is the only state. It is
    torch.optim.Adam(betas=(0, beta2))'s update, operation for operation (tested equal), without
    a second UNet-sized buffer per network (3.4 GB each for SD 1.x, in memory and in every
    checkpoint). SFD's optimizer (the reference's betas)."""

    def __init__(self, params, lr: float, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "beta2": beta2, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, beta2, eps = group["lr"], group["beta2"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad, exp_avg_sq = p.grad, state["exp_avg_sq"]
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction2_sqrt = (1 - beta2 ** state["step"].item()) ** 0.5
                p.addcdiv_(grad, (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), value=-lr)


def make_adam(choice: str, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
              device_type: str, processes: int = 1) -> torch.optim.Optimizer:
    """The Adam of `choice` (a resolved MemoryPlan.optimizer) over `params`: AdamW when
    weight_decay > 0 (decoupled decay, DoCo's), AdamWithoutFirstMoment for adam at beta1 = 0.
    `processes`: how many processes train these weights together (adam-sharded shards over them)."""
    params = list(params)
    if choice in ("adam", "adam-sharded"):
        if betas[0] == 0 and not weight_decay:
            cls, settings = AdamWithoutFirstMoment, {"lr": lr, "beta2": betas[1], "eps": eps}
        elif weight_decay:
            cls, settings = torch.optim.AdamW, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        else:
            cls, settings = torch.optim.Adam, {"lr": lr, "betas": betas, "eps": eps}
        if choice == "adam-sharded" and processes > 1:
            from torch.distributed.optim import ZeroRedundancyOptimizer
            return ZeroRedundancyOptimizer(params, optimizer_class=cls, **settings)
        return cls(params, **settings)
    if choice == "adam8bit":
        return _adam8bit(params, lr, betas, eps, weight_decay)
    if choice == "adam-offload":
        return _adam_offload(params, lr, betas, eps, weight_decay, device_type)
    raise UserError(f"--optimizer must be auto, {', '.join(OPTIMIZERS)} (got '{choice}')")


def check_optimizer_device(choice: str, device_type: str) -> None:
    if choice == "adam-offload" and device_type != "cuda":
        raise UserError(f"--optimizer adam-offload moves Adam's state from a CUDA GPU to the CPU; on {device_type} "
                        "use --optimizer adam or adam8bit")


def _adam8bit(params, lr, betas, eps, weight_decay):
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise UserError("--optimizer adam8bit needs bitsandbytes: pip install 'erasure[adam8bit]' "
                        "(or pip install bitsandbytes)") from None
    base = bnb.optim.AdamW8bit if weight_decay else bnb.optim.Adam8bit

    class FlatState(base):
        """bitsandbytes' 8-bit Adam whose state dict is torch's flat one (its quantisation
        tensors beside the rest, not in the nested dict it makes for FSDP; its int step a
        tensor), so checkpoints store it as tensors like every other optimizer's."""

        def state_dict(self):
            state = torch.optim.Optimizer.state_dict(self)
            state["state"] = {i: {k: flat(k, v) for k, v in slots.items()} for i, slots in state["state"].items()}
            return state

        def load_state_dict(self, state_dict, move_to_device=True):
            state = {i: {k: int(v) if k == "step" and torch.is_tensor(v) else v for k, v in slots.items()}
                     for i, slots in state_dict["state"].items()}
            super().load_state_dict({**state_dict, "state": state}, move_to_device=move_to_device)

    def flat(key, value):
        if key == "step" and not torch.is_tensor(value):
            return torch.tensor(value)
        # every weight's state points at the optimizer's one quantisation map: a copy each, as
        # safetensors stores no shared tensors (256 floats)
        return value.clone() if key.startswith("qmap") else value

    kwargs = {"weight_decay": weight_decay} if weight_decay else {}
    return FlatState(params, lr=lr, betas=betas, eps=eps, **kwargs)


def _adam_offload(params, lr, betas, eps, weight_decay, device_type):
    check_optimizer_device("adam-offload", device_type)
    try:
        from torchao.optim import CPUOffloadOptimizer
    except ImportError:
        raise UserError("--optimizer adam-offload needs torchao: pip install 'erasure[offload]' "
                        "(or pip install torchao)") from None

    class OffloadAdam(CPUOffloadOptimizer):
        """torchao's CPUOffloadOptimizer (Adam's state and step on the CPU) with two changes:
        the step reads the gradients as they are at step time (its hook copies them when
        backward writes them, before SalUn's mask, a clip or DoCo's projection edit them or
        set them), and a torch-format state dict (state and one param group per weight,
        indexed in the order the weights were given) for erasure's checkpoints."""

        def __init__(self, params, optimizer_class, **kwargs):
            self.order = list(params)
            # CPUOffloadOptimizer skips weights that need no gradient when it is made (SFD's
            # fake net is frozen between its updates)
            frozen = [p for p in self.order if not p.requires_grad]
            for p in frozen:
                p.requires_grad_(True)
            try:
                super().__init__(self.order, optimizer_class, **kwargs)
            finally:
                for p in frozen:
                    p.requires_grad_(False)
            # the weights torchao keeps on the GPU (under minimal_size), by their index in its d_opt
            on_device = [p for p in self.order if p not in self.param_d2h_map]
            self.on_device = {id(p): j for j, p in enumerate(on_device)}

        @torch.no_grad()
        def step(self, closure=None):
            self.stream.synchronize()  # the hook's copies are done before they are overwritten
            for p_device, p_host in self.param_d2h_map.items():
                if p_device.grad is not None:
                    p_host.grad.copy_(p_device.grad)
                    self.queue.pop(p_device, None)
                    self.queue[p_device] = torch.cuda.current_stream().record_event()
                else:
                    self.queue.pop(p_device, None)
            return super().step(closure)

        def state_dict(self):
            state, groups = {}, []
            d_state = self.d_opt.state_dict() if self.d_opt is not None else None
            for i, p in enumerate(self.order):
                if p in self.optim_dict:
                    sd = self.optim_dict[p].state_dict()
                    slots, group = sd["state"].get(0), sd["param_groups"][0]
                else:
                    j = self.on_device[id(p)]
                    slots = d_state["state"].get(j)
                    group = next(g for g in d_state["param_groups"] if j in g["params"])
                if slots is not None:
                    state[i] = slots
                groups.append({**group, "params": [i]})
            return {"state": state, "param_groups": groups}

        def load_state_dict(self, state_dict):
            state, groups = state_dict["state"], state_dict["param_groups"]
            d_state, d_groups = {}, []
            for i, p in enumerate(self.order):
                group = {k: v for k, v in groups[i].items() if k != "params"}
                if p in self.optim_dict:
                    self.optim_dict[p].load_state_dict({"state": {0: state[i]} if i in state else {},
                                                        "param_groups": [{**group, "params": [0]}]})
                else:
                    j = self.on_device[id(p)]
                    if i in state:
                        d_state[j] = state[i]
                    d_groups.append((j, group))
            if self.d_opt is not None:
                merged = {**d_groups[0][1], "params": [j for j, _ in d_groups]}
                self.d_opt.load_state_dict({"state": d_state, "param_groups": [merged]})

    if betas[0] == 0 and not weight_decay:
        return OffloadAdam(params, AdamWithoutFirstMoment, lr=lr, beta2=betas[1], eps=eps)
    return OffloadAdam(params, torch.optim.AdamW, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
