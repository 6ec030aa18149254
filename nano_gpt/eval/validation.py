"""Validation loss: the mean loss over the first batches of a held-out split."""

from typing import Protocol

import torch

from nano_gpt.runtime import autocast
from nano_gpt.distributed import all_reduce_mean


class BatchLoader(Protocol):
    """What validation needs of a loader (`nano_gpt.data.ShardLoader` is one)."""

    def reset(self) -> None: ...

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...


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
                _, loss = model(x.to(device), y.to(device))
            total += loss.float()
    model.train(was_training)
    return all_reduce_mean(total / steps).item()
