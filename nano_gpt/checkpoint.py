"""Training checkpoints: one file per save, written atomically, read without unpickling code.

A checkpoint is a plain dict of tensors and Python primitives (model and optimizer state, step,
configs as dicts, data-loader position, RNG states) saved with `torch.save` and loaded with
`weights_only=True`, so loading a checkpoint cannot execute code.
"""

import os
import re
from pathlib import Path
from typing import Any

import torch

from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT, GPTConfig

_NAME = re.compile(r"checkpoint_(\d+)\.bin")


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    """Where the checkpoint after `step` goes: checkpoint_{step:06d}.bin."""
    return Path(checkpoint_dir) / f"checkpoint_{step:06d}.bin"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temp file, fsync, then rename: a kill at any moment leaves the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
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


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict; a missing, corrupt or foreign file is a one-line NanoGPTError."""
    path = Path(path)
    if not path.is_file():
        raise NanoGPTError(f"checkpoint {path} not found; pass a checkpoint_NNNNNN.bin written by `nano-gpt train`")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise NanoGPTError(f"cannot read checkpoint {path}: the file is corrupt or not a nano-gpt checkpoint") from e
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise NanoGPTError(f"{path} is not a nano-gpt checkpoint (no model or model_config)")
    return state


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint with the highest step in `checkpoint_dir`, if any."""
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).glob("checkpoint_*.bin") if (m := _NAME.fullmatch(p.name))]
    return max(found)[1] if found else None


def model_from_state(state: dict[str, Any]) -> GPT:
    """The GPT a loaded checkpoint holds."""
    model = GPT(GPTConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    return model


def model_from_checkpoint(path: Path) -> GPT:
    """The trained model in a checkpoint, on the CPU in fp32."""
    return model_from_state(load_checkpoint(path)).float().eval()
