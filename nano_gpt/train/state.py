"""Everything a run needs to continue exactly where it stopped, and the one checkpoint layout.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), written by
`TrainState.state_dict` and read back by `TrainState.load_state_dict`:

    step          the last completed step (int)
    model         the unwrapped, uncompiled model's state dict
    model_config  GPTConfig as a dict
    train_config  TrainConfig as a dict (the run's settings)
    optimizer     AdamW's state dict
    muon          Muon's state dict (its momentum buffers), when the run trains with --optimizer=muon
    scaler        the fp16 grad scaler's state dict (disabled: empty)
    loader        the training data position {"epoch", "position"}
    tokenizer     the dataset's tokenizer record (`nano_gpt.tokenizer.tokenizer_record`): what the ids mean
    rng           {"torch": ByteTensor, "cuda": ByteTensor (on CUDA)}
    run           {"device", "dtype", "world_size", "nano_gpt_version"}: what trained it
    metrics       the latest {"tokens", "train_loss", "val_loss", "hellaswag_acc", "hellaswag_acc_norm"}
    trackers      the experiment-tracker runs it reports to, {name: identity} (`nano_gpt.trackers`), to continue them

Under FSDP the same dict is saved as a sharded folder (`nano_gpt.checkpoint.sharded`), with `model` and
`optimizer` as each rank's shards (FSDP runs train with AdamW alone) and the optimizer's state keyed by
parameter name instead of by index (`torch.distributed.checkpoint.state_dict`). Resuming from a folder reads them straight into the resuming
run's own layout, whatever number of ranks wrote them and whether it shards or not.

Reading and checking a checkpoint is `nano_gpt.checkpoint.read_checkpoint`'s job (`train_state=True`);
`load_state_dict` takes what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_optimizer_state_dict,
                                                     set_state_dict)

from nano_gpt.checkpoint import OnDisk
from nano_gpt.data import ShardLoader
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.parallel import is_fsdp
from nano_gpt.runtime import Runtime
from nano_gpt.train.optim import OPTIMIZER_KEYS
from nano_gpt.version import nano_gpt_version


@dataclass
class TrainState:
    """The parts of a run that change as it trains; `step` is the last completed one (-1 before any)."""

    model: GPT  # unwrapped and uncompiled: what is saved, so a checkpoint loads anywhere
    optimizers: list[torch.optim.Optimizer]  # in `OPTIMIZER_KEYS` order: AdamW, then Muon if the run uses it
    scaler: torch.amp.GradScaler
    loader: ShardLoader
    runtime: Runtime
    config: dict[str, Any]  # TrainConfig.to_dict()
    step: int = -1
    metrics: dict[str, float] = field(default_factory=dict)
    trackers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        """FSDP splits the model and optimizer over ranks: every rank saves its part, into a folder."""
        return is_fsdp(self.model)

    def state_dict(self) -> dict[str, Any]:
        if self.sharded:
            [optimizer] = self.optimizers
            model, state = get_state_dict(self.model, optimizer)  # this rank's shards, keyed by name
            optimizers = {"optimizer": state}
        else:
            model = self.model.state_dict()
            optimizers = {key: o.state_dict() for key, o in zip(OPTIMIZER_KEYS, self.optimizers)}
        return {
            "step": self.step,
            "model": model,
            "model_config": self.model.config.to_dict(),
            "train_config": self.config,
            **optimizers,
            "scaler": self.scaler.state_dict(),
            "loader": self.loader.state_dict(),
            "tokenizer": self.loader.tokenizer,
            "rng": self.runtime.rng_state(),
            "run": {"device": str(self.runtime.device), "dtype": self.runtime.dtype_name,
                    "world_size": self.runtime.world_size, "nano_gpt_version": nano_gpt_version()},
            "metrics": dict(self.metrics),
            "trackers": dict(self.trackers),
        }

    def load_state_dict(self, checkpoint: dict[str, Any], source: Path | str) -> None:
        """Restore a run from `read_checkpoint(..., train_state=True).train_state`, checked there; from a file the
        model already holds the checkpoint's weights, from a sharded folder they arrive here with the optimizer."""
        try:
            if isinstance(checkpoint["optimizer"], OnDisk):
                self._load_sharded(checkpoint["optimizer"])
            elif self.sharded:
                set_optimizer_state_dict(self.model, self.optimizers[0], self._by_name(checkpoint["optimizer"]),
                                         options=StateDictOptions(full_state_dict=True))  # each rank keeps its shard
            else:
                for key, optimizer in zip(OPTIMIZER_KEYS, self.optimizers):
                    optimizer.load_state_dict(checkpoint[key])
            self.scaler.load_state_dict(checkpoint["scaler"])
            self.runtime.set_rng_state(checkpoint["rng"])
        except (ValueError, RuntimeError, KeyError, TypeError) as e:
            raise NanoGPTError(f"checkpoint {source}: its optimizer, grad scaler or RNG state does not fit this "
                               f"model ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        self.loader.load_state_dict(checkpoint["loader"])
        self.step = checkpoint["step"]
        self.metrics = dict(checkpoint["metrics"])
        self.trackers = dict(checkpoint.get("trackers", {}))

    def _load_sharded(self, on_disk: OnDisk) -> None:
        """Model and optimizer from a sharded folder, into this run's layout: each rank reads the slices of its
        own shards (or whole tensors when it does not shard), whatever number of ranks wrote them."""
        [optimizer] = self.optimizers
        model, state = get_state_dict(self.model, optimizer)
        parts = {"model": model, "optimizer": state}
        on_disk.read_into(parts)
        set_state_dict(self.model, optimizer, model_state_dict=parts["model"], optim_state_dict=parts["optimizer"])

    def _by_name(self, saved: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint file's optimizer state (keyed by each parameter's index in the optimizer) keyed by parameter
        name instead, as FSDP's loader takes it; the optimizer is built in the same order whatever the run."""
        names = {p: name for name, p in self.model.named_parameters()}
        by_index = {index: names[p] for saved_group, group in zip(saved["param_groups"], self.optimizers[0].param_groups)
                    for index, p in zip(saved_group["params"], group["params"])}
        return {"state": {by_index[i]: s for i, s in saved["state"].items()},
                "param_groups": [{**g, "params": [by_index[i] for i in g["params"]]} for g in saved["param_groups"]]}
