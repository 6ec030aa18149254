"""The optimizers (AdamW as GPT-3 trained it, or Muon on the hidden matrices with AdamW on the rest) and the
learning-rate schedule (warmup + cosine, or warmup-stable-decay) that scales every one of their groups."""

import math
from collections.abc import Iterable

import torch
from torch import nn

from nano_gpt.errors import NanoGPTError
from nano_gpt.train.config import MUON_TORCH, TrainConfig

# The order of a run's optimizers, and the checkpoint key that holds each one's state (`TrainState`).
OPTIMIZER_KEYS = ("optimizer", "muon")


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float,
                   fused: bool = False) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.95; eps 1e-8); weight decay on 2-D weights only (matmuls and embeddings),
    not on biases and LayerNorm gains. `fused`: one kernel for all parameters (`Runtime.has_fused_adamw`)."""
    params = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def hidden_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Muon's parameters: the 2-D weights inside the transformer blocks (attention's c_attn and c_proj, the MLP's
    c_fc and c_proj). The embeddings and the tied LM head are lookups and a classifier, not hidden maps, and
    biases and LayerNorm gains are vectors: AdamW keeps those."""
    return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() == 2 and name.startswith("transformer.h.")]


def require_optimizer(name: str) -> None:
    """Refuse before anything is written when this torch lacks the optimizer asked for."""
    if name == "muon" and not hasattr(torch.optim, "Muon"):
        raise NanoGPTError(f"--optimizer=muon needs torch >= {MUON_TORCH} (torch.optim.Muon); this is torch "
                           f"{torch.__version__}: upgrade torch or use --optimizer=adamw")


def make_optimizers(model: nn.Module, config: TrainConfig, fused: bool = False) -> list[torch.optim.Optimizer]:
    """The run's optimizers in `OPTIMIZER_KEYS` order: AdamW alone, or AdamW and Muon over disjoint parameters.
    `config` is resolved; each optimizer starts at its own peak lr (`peak_lrs`)."""
    if config.optimizer == "adamw":
        return [make_optimizer(model.parameters(), config.max_lr, config.weight_decay, fused)]
    require_optimizer(config.optimizer)
    muon_params = hidden_matrices(model)
    by_muon = {id(p) for p in muon_params}
    adamw = make_optimizer((p for p in model.parameters() if id(p) not in by_muon), config.max_lr,
                           config.weight_decay, fused)
    # "match_rms_adamw" scales each matrix's step to AdamW's update RMS (0.2 x sqrt(its larger side)), so
    # --muon-lr speaks AdamW's units and carries across model widths.
    muon = torch.optim.Muon(muon_params, lr=config.muon_lr, weight_decay=config.muon_weight_decay,
                            momentum=config.muon_momentum, nesterov=True, adjust_lr_fn="match_rms_adamw")
    return [adamw, muon]


def peak_lrs(config: TrainConfig) -> list[float]:
    """Each optimizer's peak learning rate, in `make_optimizers`' order."""
    return [config.max_lr] if config.optimizer == "adamw" else [config.max_lr, config.muon_lr]


def lr_factor(step: int, config: TrainConfig) -> float:
    """The schedule at `step`, as a fraction of the peak learning rate (every optimizer shares it): a linear
    warmup, then cosine decay to --min-lr-ratio at --max-steps, or (wsd) constant, then a linear decay over the
    last --decay-fraction of the steps. WSD's plateau lets a run be extended by starting the decay later."""
    warmup, end, floor = config.warmup_steps, config.max_steps, config.min_lr_ratio
    if step < warmup:
        return (step + 1) / warmup
    if step >= end:
        return floor
    if config.lr_schedule == "wsd":
        remaining = (end - step) / (config.decay_fraction * end)  # 1 where the decay starts, 0 at --max-steps
        return floor + (1.0 - floor) * min(1.0, remaining)
    progress = (step - warmup) / (end - warmup)  # 0 -> 1
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)


def set_lr(optimizers: list[torch.optim.Optimizer], config: TrainConfig, step: int) -> float:
    """Set every group's learning rate for `step`; returns AdamW's (the one the log shows)."""
    factor = lr_factor(step, config)
    for optimizer, peak in zip(optimizers, peak_lrs(config), strict=True):
        for group in optimizer.param_groups:
            group["lr"] = peak * factor
    return config.max_lr * factor
