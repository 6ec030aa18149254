"""Everything a run needs to continue exactly where it stopped, and the one checkpoint layout.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), written by
`TrainState.state_dict` and read back by `TrainState.load_state_dict`, which checks its structure first so
that a damaged or foreign file is one clear error instead of a traceback halfway through loading:

    step          the last completed step (int)
    model         the unwrapped, uncompiled model's state dict
    model_config  GPTConfig as a dict
    train_config  TrainConfig as a dict (the run's settings)
    optimizer     AdamW's state dict
    scaler        the fp16 grad scaler's state dict (disabled: empty)
    loader        the training data position {"epoch", "position"}
    rng           {"torch": ByteTensor, "cuda": ByteTensor (on CUDA)}
    run           {"device", "dtype", "world_size", "nano_gpt_version"}: what trained it
    metrics       the latest {"tokens", "train_loss", "val_loss", "hellaswag_acc", "hellaswag_acc_norm"}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from nano_gpt.config import GPTConfig
from nano_gpt.data import ShardLoader
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.runtime import Runtime

REQUIRED: dict[str, type] = {
    "step": int, "model": dict, "model_config": dict, "train_config": dict, "optimizer": dict, "scaler": dict,
    "loader": dict, "rng": dict,
}


def nano_gpt_version() -> str:
    try:
        return version("nano-gpt")
    except PackageNotFoundError:
        return "unknown"


def check_structure(checkpoint: dict[str, Any], source: Path | str) -> None:
    """Refuse a checkpoint that lacks a part a resumed run needs, or holds one of the wrong kind."""
    def bad(what: str) -> NanoGPTError:
        return NanoGPTError(f"checkpoint {source}: {what}; it cannot resume a run (sample, eval and export may "
                            "still read its weights)")

    for key, kind in REQUIRED.items():
        if key not in checkpoint:
            raise bad(f"no {key!r}")
        value = checkpoint[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(f"{key!r} is a {type(value).__name__}, not a {kind.__name__}")
    if checkpoint["step"] < 0:
        raise bad(f"step is {checkpoint['step']}")
    if not all(isinstance(t, torch.Tensor) for t in checkpoint["model"].values()):
        raise bad("'model' holds something other than tensors")
    if not {"state", "param_groups"} <= checkpoint["optimizer"].keys():
        raise bad("'optimizer' is not an optimizer state (no state or param_groups)")
    loader = checkpoint["loader"]
    if not all(isinstance(loader.get(k), int) and loader[k] >= 0 for k in ("epoch", "position")):
        raise bad("'loader' needs non-negative integers epoch and position")
    rng = checkpoint["rng"].get("torch")
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise bad("'rng' has no torch generator state (a uint8 tensor)")
    try:
        GPTConfig.from_dict(checkpoint["model_config"])
    except (TypeError, ValueError) as e:
        raise bad(f"'model_config' is not a GPT config ({e})") from e


def model_from_checkpoint_state(checkpoint: dict[str, Any], source: Path | str) -> GPT:
    """The model a structurally sound checkpoint holds, on the CPU."""
    model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise NanoGPTError(f"checkpoint {source}: the weights do not fit its model_config ({first_line})") from e
    return model


@dataclass
class TrainState:
    """The parts of a run that change as it trains; `step` is the last completed one (-1 before any)."""

    model: GPT  # unwrapped and uncompiled: what is saved, so a checkpoint loads anywhere
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loader: ShardLoader
    runtime: Runtime
    config: dict[str, Any]  # TrainConfig.to_dict()
    step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "train_config": self.config,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": self.runtime.rng_state(),
            "run": {"device": str(self.runtime.device), "dtype": self.runtime.dtype_name,
                    "world_size": self.runtime.world_size, "nano_gpt_version": nano_gpt_version()},
            "metrics": dict(self.metrics),
        }

    def load_state_dict(self, checkpoint: dict[str, Any], source: Path | str) -> None:
        """Restore a run; the model already holds the checkpoint's weights (see `model_from_checkpoint_state`)."""
        check_structure(checkpoint, source)
        try:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.runtime.set_rng_state(checkpoint["rng"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise NanoGPTError(f"checkpoint {source}: its optimizer, grad scaler or RNG state does not fit this "
                               f"model ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        self.loader.load_state_dict(checkpoint["loader"])
        self.step = checkpoint["step"]
        metrics = checkpoint.get("metrics", {})
        self.metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if isinstance(metrics, dict) else {}
