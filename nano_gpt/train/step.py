"""One optimizer step, exactly as training runs it; the benchmarks time this same function.

Gradient accumulation over micro-batches (the loss of each scaled so the step sees the mean over all of
them), autocast, the fp16 grad scaler, gradient-norm clipping over every parameter, and the data-parallel
gradient sync on the last micro-step only. Nothing is updated when the loss or the gradient norm is not
finite. A run may have several optimizers over disjoint parameters (Muon and AdamW): each is unscaled and
stepped, and the scaler updated once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nano_gpt.distributed import all_reduce_sum, clip_grad_norm, set_gradient_sync
from nano_gpt.runtime import Runtime


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the step's micro-batches and all ranks
    norm: float  # the global gradient norm before clipping
    skipped: bool  # fp16 gradients overflowed: the scaler skipped the update and lowered its scale
    stop_requested: bool  # some rank asked to stop (Ctrl-C), so all ranks stop after this step


class NonFiniteError(Exception):
    """The loss or gradient norm is NaN or infinite; raised before the weights change."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


def train_step(
    model: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    next_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    grad_accum: int,
    grad_clip: float,
    stop_requested: bool = False,
) -> StepResult:
    """Accumulate `grad_accum` micro-batches from `next_batch` (CPU tensors), then clip and update.

    `model` is what runs the forward pass: the model itself (FSDP's included), or its DDP and/or compiled wrapper.
    """
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=runtime.device)
    for micro_step in range(grad_accum):
        x, y = runtime.to_device(*next_batch())
        set_gradient_sync(model, micro_step == grad_accum - 1)
        with runtime.autocast():
            _, loss = model(x, y, return_logits=False)  # the fused loss: no (B, T, V) logits
        loss = loss / grad_accum  # the mean over the whole step, not the sum of means
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    # One collective per step: the loss to average, and whether any rank asked to stop.
    stats = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(stop_requested), device=runtime.device)]))
    loss_value, stopping = stats[0].item() / runtime.world_size, stats[1].item() > 0
    if not math.isfinite(loss_value):
        raise NonFiniteError("the loss", loss_value)
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
    norm = clip_grad_norm(model.parameters(), grad_clip)
    if not math.isfinite(norm) and not scaler.is_enabled():
        raise NonFiniteError("the gradient norm", norm)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    if math.isfinite(norm):  # with fp16, overflowed gradients skip every optimizer's update, not only the one
        for optimizer in optimizers:  # whose parameters overflowed (the scaler decides per optimizer)
            scaler.step(optimizer)
    scaler.update()
    skipped = scale is not None and scaler.get_scale() < scale
    return StepResult(loss_value, norm, skipped, stopping)
