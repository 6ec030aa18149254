"""Training checkpoints: one file per save, written atomically, read without unpickling code.

A checkpoint is a plain dict of tensors and Python primitives (model and optimizer state, step,
configs as dicts, data-loader position, RNG states) saved with `torch.save` and loaded with
`weights_only=True`, so loading a checkpoint cannot execute code. `model_from_checkpoint` also reads
the checkpoints of the projects nano-gpt grew from (see `nano_gpt.peer_checkpoints`).

FSDP runs write the same dict as a sharded folder, `checkpoint_NNNNNN/` (see `nano_gpt.sharded_checkpoint`);
every function here takes either kind, a folder being put together on the fly.
"""

import os
import re
from pathlib import Path
from typing import Any

import torch

from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT, GPTConfig
from nano_gpt.peer_checkpoints import UNDERSTOOD, peer_format, peer_model, read_checkpoint_file
from nano_gpt.sharded_checkpoint import is_sharded, read_sharded
from nano_gpt.weights import config_from_fields, model_from_weights

_NAME = re.compile(r"checkpoint_(\d+)(\.bin)?")


def checkpoint_path(checkpoint_dir: Path, step: int, sharded: bool = False) -> Path:
    """Where the checkpoint after `step` goes: checkpoint_{step:06d}.bin, or the folder checkpoint_{step:06d}."""
    return Path(checkpoint_dir) / f"checkpoint_{step:06d}{'' if sharded else '.bin'}"


def checkpoints_in(checkpoint_dir: Path) -> list[Path]:
    """The checkpoints in `checkpoint_dir`, files and complete sharded folders, oldest step first."""
    found = [(int(m.group(1)), p.stat().st_mtime, p) for p in Path(checkpoint_dir).glob("checkpoint_*")
             if (m := _NAME.fullmatch(p.name)) and (p.is_file() if m.group(2) else is_sharded(p))]
    return [p for _, _, p in sorted(found)]


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


def _is_nano_gpt_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and "model" in state and "model_config" in state


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A nano-gpt checkpoint dict; a missing, corrupt or foreign file is a one-line NanoGPTError."""
    state = read_sharded(path) if is_sharded(path) else read_checkpoint_file(path, map_location)
    if not _is_nano_gpt_checkpoint(state):
        if (fmt := peer_format(state)) is not None:
            raise NanoGPTError(f"{path} is a {fmt} checkpoint: it holds a model but not nano-gpt's training state, "
                               f"so it cannot be resumed; fine-tune from it with `nano-gpt train --pretrained={path}`")
        raise NanoGPTError(f"{path} is not a checkpoint nano-gpt understands; it reads {UNDERSTOOD}")
    return state


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint with the highest step in `checkpoint_dir`, if any (of a file and a folder for one step, the
    newer)."""
    found = checkpoints_in(checkpoint_dir)
    return found[-1] if found else None


def model_from_state(state: dict[str, Any], source: str = "checkpoint") -> GPT:
    """The GPT a loaded nano-gpt checkpoint holds, its sizes, keys and shapes checked (`source` names it in errors)."""
    fields = state["model_config"]
    if not isinstance(fields, dict):
        raise NanoGPTError(f"{source}: model_config is {type(fields).__name__}, not a dict of GPTConfig fields")
    config_from_fields(fields, source)  # sizes in range before anything is built
    try:
        config = GPTConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise NanoGPTError(f"{source}: model_config does not fit GPTConfig ({e})") from e
    return model_from_weights(config, state["model"], source)


def model_from_checkpoint(path: Path) -> GPT:
    """The model in a checkpoint of nano-gpt or of a peer project (see `UNDERSTOOD`), on the CPU in fp32."""
    if is_sharded(path):  # only the weights, put together from the shards; the optimizer state stays on disk
        state = read_sharded(path, ("model", "model_config"))
        if not _is_nano_gpt_checkpoint(state):
            raise NanoGPTError(f"{path} is a sharded checkpoint without nano-gpt's model and model_config")
        return model_from_state(state, str(path)).float().eval()
    state = read_checkpoint_file(path)
    model = model_from_state(state, str(path)) if _is_nano_gpt_checkpoint(state) else peer_model(state, Path(path))
    return model.float().eval()
