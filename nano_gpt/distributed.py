"""Process-group set-up under `torchrun`: rank, world size, device, and the main-process guard.

The model code knows nothing of this; training wraps the model in DDP from outside.
"""

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nano_gpt.devices import resolve_device
from nano_gpt.errors import NanoGPTError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates what is not sharded, and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (NCCL on CUDA, gloo on CPU); else one process."""
    if "RANK" not in os.environ:
        return DistInfo(), resolve_device(device)
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if info.local_rank >= torch.cuda.device_count():
            raise NanoGPTError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs; lower --nproc_per_node")
        torch_device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(torch_device)
        dist.init_process_group("nccl", device_id=torch_device)
    elif device in ("auto", "cpu"):
        torch_device = torch.device("cpu")
        dist.init_process_group("gloo")
    else:
        raise NanoGPTError(f"--device={device} is not supported under torchrun; use cuda (NCCL) or cpu (gloo)")
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one process speaks for the run
    return info, torch_device


def cleanup_distributed() -> None:
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


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks in place (identity without a process group)."""
    return all_reduce_sum(t).div_(world_size())
