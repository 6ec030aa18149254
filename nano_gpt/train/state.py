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

Under FSDP the same dict is saved as a sharded folder (`nano_gpt.sharded_checkpoint`), with `model` and
`optimizer` as each rank's shards and the optimizer's state keyed by parameter name instead of by index
(`torch.distributed.checkpoint.state_dict`). Resuming from a folder reads them straight into the resuming
run's own layout, whatever number of ranks wrote them and whether it shards or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_optimizer_state_dict,
                                                     set_state_dict)

from nano_gpt.checkpoint import load_checkpoint, model_from_state
from nano_gpt.config import GPTConfig
from nano_gpt.data import ShardLoader
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.parallel import is_fsdp
from nano_gpt.runtime import Runtime
from nano_gpt.sharded_checkpoint import is_sharded, load_sharded, read_sharded, top_level_keys

REQUIRED: dict[str, type] = {
    "step": int, "model": dict, "model_config": dict, "train_config": dict, "optimizer": dict, "scaler": dict,
    "loader": dict, "rng": dict,
}


def nano_gpt_version() -> str:
    try:
        return version("nano-gpt")
    except PackageNotFoundError:
        return "unknown"


ON_DISK = ("model", "optimizer")  # of a sharded checkpoint, read only once the resuming run's layout exists


@dataclass(frozen=True)
class Sharded:
    """Stands for the model or optimizer of a sharded checkpoint until `TrainState.load_state_dict` reads it."""

    path: Path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint to resume from, its structure checked: a file whole; of a sharded folder everything but the
    model and optimizer, which stay on disk (as `Sharded`) to be read straight into this run's shards."""
    if is_sharded(path):
        keys = top_level_keys(path)
        checkpoint = read_sharded(path, keys - set(ON_DISK))
        checkpoint |= {key: Sharded(Path(path)) for key in ON_DISK if key in keys}
        for key in ("scaler", "metrics"):  # empty dicts are not stored in a sharded checkpoint
            checkpoint.setdefault(key, {})
    else:
        checkpoint = load_checkpoint(path)
    check_structure(checkpoint, path)
    return checkpoint


def check_structure(checkpoint: dict[str, Any], source: Path | str) -> None:
    """Refuse a checkpoint that lacks a part a resumed run needs, or holds one of the wrong kind."""
    def bad(what: str) -> NanoGPTError:
        return NanoGPTError(f"checkpoint {source}: {what}; it cannot resume a run (sample, eval and export may "
                            "still read its weights)")

    for key, kind in REQUIRED.items():
        if key not in checkpoint:
            raise bad(f"no {key!r}")
        value = checkpoint[key]
        on_disk = key in ON_DISK and isinstance(value, Sharded)
        if (not isinstance(value, kind) and not on_disk) or isinstance(value, bool):
            raise bad(f"{key!r} is a {type(value).__name__}, not a {kind.__name__}")
    if checkpoint["step"] < 0:
        raise bad(f"step is {checkpoint['step']}")
    model, optimizer = checkpoint["model"], checkpoint["optimizer"]
    if isinstance(model, dict) and not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise bad("'model' holds something other than tensors")
    if isinstance(optimizer, dict) and not {"state", "param_groups"} <= optimizer.keys():
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
    """The model a structurally sound checkpoint holds, on the CPU (of a sharded one, the model it was: its weights
    arrive with `TrainState.load_state_dict`)."""
    if isinstance(checkpoint["model"], Sharded):
        return GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    return model_from_state(checkpoint, f"checkpoint {source}")  # sizes, keys and shapes checked


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

    @property
    def sharded(self) -> bool:
        """FSDP splits the model and optimizer over ranks: every rank saves its part, into a folder."""
        return is_fsdp(self.model)

    def state_dict(self) -> dict[str, Any]:
        if self.sharded:
            model, optimizer = get_state_dict(self.model, self.optimizer)  # this rank's shards, keyed by name
        else:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
        return {
            "step": self.step,
            "model": model,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config,
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": self.runtime.rng_state(),
            "run": {"device": str(self.runtime.device), "dtype": self.runtime.dtype_name,
                    "world_size": self.runtime.world_size, "nano_gpt_version": nano_gpt_version()},
            "metrics": dict(self.metrics),
        }

    def load_state_dict(self, checkpoint: dict[str, Any], source: Path | str) -> None:
        """Restore a run (see `read_checkpoint`); from a file the model already holds the checkpoint's weights (see
        `model_from_checkpoint_state`)."""
        check_structure(checkpoint, source)
        try:
            if isinstance(checkpoint["optimizer"], Sharded):
                self._load_sharded(checkpoint["optimizer"].path)
            elif self.sharded:
                set_optimizer_state_dict(self.model, self.optimizer, self._by_name(checkpoint["optimizer"]),
                                         options=StateDictOptions(full_state_dict=True))  # each rank keeps its shard
            else:
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

    def _load_sharded(self, path: Path) -> None:
        """Model and optimizer from a sharded folder, into this run's layout: each rank reads the slices of its
        own shards (or whole tensors when it does not shard), whatever number of ranks wrote them."""
        model, optimizer = get_state_dict(self.model, self.optimizer)
        parts = {"model": model, "optimizer": optimizer}
        load_sharded(path, parts)
        set_state_dict(self.model, self.optimizer, model_state_dict=parts["model"], optim_state_dict=parts["optimizer"])

    def _by_name(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint file's optimizer state (keyed by each parameter's index in the optimizer) keyed by parameter
        name instead, as FSDP's loader takes it; the optimizer is built in the same order whatever the run."""
        names = {p: name for name, p in self.model.named_parameters()}
        by_index = {index: names[p] for saved_group, group in zip(saved["param_groups"], self.optimizer.param_groups)
                    for index, p in zip(saved_group["params"], group["params"])}
        return {"state": {by_index[i]: s for i, s in saved["state"].items()},
                "param_groups": [{**g, "params": [by_index[i] for i in g["params"]]} for g in saved["param_groups"]]}
