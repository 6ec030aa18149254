"""Process groups under `torchrun`, collectives, and data parallelism applied from outside the model.

The model code knows nothing of this: training wraps the single-device model here (`wrap_ddp`, or FSDP in
`nano_gpt.parallel`), and `Runtime` asks `torchrun_ranks` whether this process is one of several.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from nano_gpt.errors import NanoGPTError


@dataclass(frozen=True)
class Ranks:
    rank: int
    local_rank: int
    world_size: int


def torchrun_ranks() -> Ranks | None:
    """This process's place in a torchrun launch, or None when started on its own."""
    if "RANK" not in os.environ:
        return None
    try:
        return Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    except (KeyError, ValueError) as e:
        raise NanoGPTError("RANK is set but LOCAL_RANK or WORLD_SIZE is missing or not a number; start "
                           "several processes with torchrun, or unset RANK") from e


def init_process_group(device: torch.device) -> None:
    """NCCL between GPUs, gloo between CPU processes. Other ranks log warnings only: one speaks for the run."""
    if device.type == "cuda":
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Processes in the group, 1 without one."""
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity without a process group)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (`obj` itself without a process group): what only rank 0 decides, such as its
    experiment-tracker runs, that every rank saves into a sharded checkpoint."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks in place (identity without a process group)."""
    return all_reduce_sum(t).div_(world_size())


def wrap_ddp(model: nn.Module, device: torch.device) -> DDP:
    """Data parallelism: gradients are averaged over ranks during the backward pass."""
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Whether the next backward pass all-reduces gradients: only the last micro-step of an accumulated
    step needs to (FSDP: the reduce-scatter waits, and the unsharded gradients accumulate until then). A
    model that is not data-parallel always keeps its gradients local."""
    model = getattr(model, "_orig_mod", model)  # under torch.compile
    if isinstance(model, DDP):
        model.require_backward_grad_sync = enabled
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(enabled)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale gradients so their global norm is at most `max_norm`; returns the norm before clipping.

    `torch.nn.utils.clip_grad_norm_`, split in its two halves so that FSDP's sharded gradients (DTensors) work
    too: each rank's share of the norm is combined over ranks before anything is scaled."""
    parameters = list(parameters)
    norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, norm)
    return norm.item()
