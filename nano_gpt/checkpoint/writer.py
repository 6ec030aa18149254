"""Writing our checkpoints: every file goes through `nano_gpt.files.atomic_write`, so a kill at any moment leaves
the old file or the new one, and a full disk is one line naming the file and the space it needs.

A single-file checkpoint is the train state's plain dict saved with `torch.save`, whose zip archive carries a
CRC-32 of every record (see `integrity`); a sharded folder is written by `sharded.save_sharded`, which puts its
`checksums.json` through `atomic_write` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nano_gpt.files import atomic_write


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in a nested dict/list: about what `torch.save` writes."""
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return obj.numel() * obj.element_size() if hasattr(obj, "element_size") else 0


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write a train state's dict (`TrainState.state_dict`) as one checkpoint file."""
    import torch

    atomic_write(Path(path), lambda f: torch.save(state, f), needed=_tensor_bytes(state))
