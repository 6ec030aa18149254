"""Validation loss: the mean loss over the first batches of a held-out split."""

import logging
from typing import Protocol

import torch

from nano_gpt.runtime import autocast
from nano_gpt.distributed import all_reduce_mean


logger = logging.getLogger(__name__)


class BatchLoader(Protocol):
    """What validation needs of a loader (`nano_gpt.data.ShardLoader` is one)."""

    steps_per_epoch: int

    def reset(self) -> None: ...

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def steps_within_split(loader: BatchLoader, steps: int) -> int:
    """`steps`, or the split's batch count where that is fewer: more would measure the same batches again (and a
    huge count would never finish)."""
    if steps > loader.steps_per_epoch:
        logger.info("--validation-steps=%d is more than the %d batches of the validation split; measuring those",
                    steps, loader.steps_per_epoch)
    return min(steps, loader.steps_per_epoch)


def validation_loss(
    model: torch.nn.Module, loader: BatchLoader, steps: int, device: torch.device | str, dtype: torch.dtype | None = None
) -> float:
    """Mean cross-entropy over `steps` batches of `loader`, reset first so every call sees the same batches.

    Under DDP (each rank with its own loader shard) the result is averaged over ranks.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader.reset()
    total = torch.zeros((), device=device)
    with torch.no_grad():
        for _ in range(steps):
            x, y = loader.next_batch()
            with autocast(device, dtype):
                _, loss = model(x.to(device), y.to(device), return_logits=False)
            total += loss.float()
    model.train(was_training)
    return all_reduce_mean(total / steps).item()
