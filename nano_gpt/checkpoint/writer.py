"""Writing our checkpoints: every file goes through `write_atomically`, so a kill at any moment leaves the old
file or the new one.

A single-file checkpoint is the train state's plain dict saved with `torch.save`, whose zip archive carries a
CRC-32 of every record (see `integrity`); a sharded folder is written by `sharded.save_sharded`, which puts its
`checksums.json` through `write_atomically` too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` through `write(file)` to a temp file, fsync, then rename; the one way this package writes a
    file. The temp name carries our PID, so the next run can tell a killed writer's leftover from a live one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write a train state's dict (`TrainState.state_dict`) as one checkpoint file."""
    import torch

    write_atomically(Path(path), lambda f: torch.save(state, f))
