"""`read_checkpoint`: the one reader of every model file a user hands nano-gpt, and the `Checkpoint` it returns.

Each format is told apart here, once, and read by its own module; what comes back is the same typed
`Checkpoint` whatever the file was, its model built and every size and shape checked, so no caller branches
on formats or validates again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nano_gpt.checkpoint import hf_folder
from nano_gpt.checkpoint.layout import METADATA, checkpoints_in, is_checkpoint_name
from nano_gpt.checkpoint.peers import (NANOGPT, UNDERSTOOD, nanogpt_meta_path, peer_format, peer_model,
                                      read_checkpoint_file, read_nanogpt_meta)
from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.hub import WEIGHT_FILES, download_model
from nano_gpt.model import GPT
from nano_gpt.weights import config_from_fields, model_from_weights

if TYPE_CHECKING:
    from nano_gpt.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

OURS = "nano-gpt"
OURS_SHARDED = "nano-gpt (sharded)"
HF_FOLDER = "Hugging Face folder"

# What resuming needs besides the model, and of which kind: `TrainState.load_state_dict` takes these.
TRAIN_STATE: dict[str, type] = {"step": int, "optimizer": dict, "scaler": dict, "loader": dict, "rng": dict,
                                "train_config": dict}
OPTIONAL_TRAIN_STATE = ("muon",)  # optimizer states only some runs have (--optimizer=muon)
_FACTS = ("step", "model_config", "train_config", "run", "metrics", "tokenizer")  # the small entries of our checkpoints
_ON_DISK = ("model", "optimizer")  # of a sharded folder, read only once the resuming run's layout exists


@dataclass(frozen=True)
class OnDisk:
    """The model and optimizer of a sharded folder, left on disk until the resuming run's layout exists: then
    `read_into` fills that layout's own state dicts (each rank its slices, whatever number of ranks wrote them)."""

    path: Path

    def read_into(self, parts: dict[str, Any]) -> None:
        from nano_gpt.checkpoint.sharded import load_sharded

        load_sharded(self.path, parts)


@dataclass
class Checkpoint:
    """A model file read and checked once: its model and, for our checkpoints, what the run recorded."""

    source: Path  # the file or folder read (for a Hub id, the downloaded folder)
    format: str  # OURS, OURS_SHARDED, a peer project (see `peers`) or HF_FOLDER
    config: GPTConfig
    model: GPT | None  # on the CPU, fp32, eval mode; None when read with weights=False
    step: int | None = None  # the last completed step, for our checkpoints
    train_config: dict[str, Any] = field(default_factory=dict)  # TrainConfig as a dict
    run: dict[str, Any] = field(default_factory=dict)  # device, dtype, world_size, nano_gpt_version
    metrics: dict[str, Any] = field(default_factory=dict)  # the latest tokens, losses, HellaSwag accuracy
    train_state: dict[str, Any] | None = None  # only when asked: what `TrainState.load_state_dict` takes
    # What the token ids mean (`nano_gpt.tokenizer.tokenizer_record`): our runs record their dataset's; a nanoGPT
    # character-level checkpoint gets it from its meta.pkl. None: GPT-2's, or a Hugging Face folder's own.
    tokenizer_record: dict[str, Any] | None = None

    def tokenizer(self) -> Tokenizer:
        """The tokenizer that goes with the model: the one its run recorded, a Hugging Face folder's own when it
        has one that is not GPT-2's, else GPT-2's."""
        from nano_gpt.tokenizer import get_tokenizer, load_tokenizer, tokenizer_from_record

        if self.tokenizer_record is not None:
            return tokenizer_from_record(self.tokenizer_record, f"checkpoint {self.source}")
        return load_tokenizer(self.source) if self.format == HF_FOLDER else get_tokenizer()


def _local(name_or_path: str | Path, hub: bool) -> Path:
    """A local file or folder as is; with `hub`, a name that is neither is a Hub repo id, downloaded."""
    path = Path(name_or_path).expanduser()
    if path.name in ("config.json", *WEIGHT_FILES) and path.is_file():
        raise NanoGPTError(f"{name_or_path} is one file of a Hugging Face model folder; pass the folder: "
                           f"--pretrained={path.parent}")
    if path.exists():
        return path
    text = str(name_or_path)
    if not hub or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise NanoGPTError(f"checkpoint {name_or_path} not found; pass a checkpoint file ({UNDERSTOOD}), a sharded "
                           "checkpoint_NNNNNN folder, or a folder holding config.json and model.safetensors")
    return download_model(text)


def _is_sharded_folder(folder: Path) -> bool:
    """Told by name or contents, so that a damaged one (no index, emptied) is reported as such."""
    return is_checkpoint_name(folder.name) or (folder / METADATA).exists() or any(folder.glob("*.distcp"))


def read_checkpoint(name_or_path: str | Path, *, weights: bool = True, train_state: bool = False,
                    hub: bool = True, meta: Path | None = None) -> Checkpoint:
    """Read any model file nano-gpt understands, once, and check it: our checkpoint file or sharded folder, the
    seed's, nanoGPT's or build-nanogpt's checkpoint, a Hugging Face folder, or (with `hub`) a Hub repo id.

    `weights=False` reads only the shape and the run's facts (cheap); `train_state=True` also reads what
    resuming needs (only our checkpoints have it). `meta` is a nanoGPT character-level checkpoint's meta.pkl
    (default: beside it, or where nanoGPT's sample.py finds it). A missing, damaged or foreign file is one
    NanoGPTError.
    """
    path = _local(name_or_path, hub)
    if path.is_dir():
        if _is_sharded_folder(path):
            return _read_sharded(path, weights, train_state)
        if not (path / "config.json").exists() and (found := checkpoints_in(path)):
            raise NanoGPTError(f"{path} is a run folder, not a model folder (no config.json); pass one of its "
                               f"checkpoints, such as {found[-1]}")
        if train_state:
            raise NanoGPTError(f"{path} is a Hugging Face folder: it holds a model but no training state, so it "
                               f"cannot be resumed; fine-tune from it with `nano-gpt train --pretrained={path}`")
        config = hf_folder.read_folder_config(path)
        model = hf_folder.read_folder(path).float().eval() if weights else None
        return Checkpoint(path, HF_FOLDER, config, model)
    return _read_file(path, weights, train_state, meta)


def load_model(name_or_path: str | Path) -> GPT:
    """The GPT in any model file `read_checkpoint` reads (a Hub id, a Hugging Face folder, a checkpoint file or
    a sharded folder), on the CPU in fp32, in eval mode."""
    return read_checkpoint(name_or_path).model


def _is_ours(state: Any) -> bool:
    return isinstance(state, dict) and "model" in state and "model_config" in state


def _config(fields: Any, source: str) -> GPTConfig:
    if not isinstance(fields, dict):
        raise NanoGPTError(f"{source}: model_config is {type(fields).__name__}, not a dict of GPTConfig fields")
    config_from_fields(fields, source)  # sizes in range before anything is built
    try:
        return GPTConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise NanoGPTError(f"{source}: model_config does not fit GPTConfig ({e})") from e


def _facts(state: dict[str, Any]) -> dict[str, Any]:
    """step, train_config, run and metrics as their types, whatever the file held (unknown: None or empty)."""
    step = state.get("step")

    def as_dict(key: str) -> dict[str, Any]:
        return state[key] if isinstance(state.get(key), dict) else {}

    return {"step": step if type(step) is int else None, "train_config": as_dict("train_config"),
            "run": as_dict("run"), "metrics": as_dict("metrics"), "tokenizer_record": state.get("tokenizer") or None}


def _read_file(path: Path, weights: bool, train_state: bool, meta: Path | None = None) -> Checkpoint:
    state = read_checkpoint_file(path, mmap=not weights and not train_state)  # mapped: only the small parts read
    fmt = None if _is_ours(state) else peer_format(state)
    if meta is not None and fmt != NANOGPT:
        raise NanoGPTError(f"--meta={meta} goes with a karpathy/nanoGPT ckpt.pt; {path} is not one")
    if not _is_ours(state):
        if train_state and fmt is not None:
            raise NanoGPTError(f"{path} is a {fmt} checkpoint: it holds a model but not nano-gpt's training state, "
                               f"so it cannot be resumed; fine-tune from it with `nano-gpt train --pretrained={path}`")
        model = peer_model(state, path).float().eval()  # anything else: one line listing the formats
        record = None
        if fmt == NANOGPT and (found := nanogpt_meta_path(path, state, meta)) is not None:
            record = read_nanogpt_meta(found)  # a character-level run: its vocabulary
            if record["n_vocab"] > model.config.vocab_size:
                raise NanoGPTError(f"{found} has {record['n_vocab']} characters but {path} only "
                                   f"{model.config.vocab_size} token embeddings; is it this run's meta.pkl?")
            logger.info("%s: character vocabulary of %d from %s", path, record["n_vocab"], found)
        return Checkpoint(path, fmt, model.config, model if weights else None, tokenizer_record=record)
    resume = _train_state(state, path) if train_state else None  # the structure first: what resuming lacks
    config = _config(state["model_config"], str(path))
    model = model_from_weights(config, state["model"], str(path)).float().eval() if weights or train_state else None
    return Checkpoint(path, OURS, config, model, **_facts(state), train_state=resume)


def _read_sharded(path: Path, weights: bool, train_state: bool) -> Checkpoint:
    from nano_gpt.checkpoint.sharded import open_sharded, read_sharded, stored_keys

    metadata = open_sharded(path)  # its checksums checked: the one check of this read
    stored = stored_keys(metadata)
    wanted = (stored - set(_ON_DISK)) if train_state else set(_FACTS) | ({"model"} if weights else set())
    state = read_sharded(path, metadata, wanted & stored)
    if not {"model", "model_config"} <= stored:
        raise NanoGPTError(f"{path} is a sharded checkpoint without nano-gpt's model and model_config")
    if train_state:  # the weights arrive with the optimizer, straight into the resuming run's layout
        state |= {key: OnDisk(path) for key in _ON_DISK if key in stored}
        for key in ("scaler", "metrics"):  # empty dicts are not stored in a sharded checkpoint
            state.setdefault(key, {})
        resume = _train_state(state, path)
        config = _config(state["model_config"], str(path))
        return Checkpoint(path, OURS_SHARDED, config, GPT(config), **_facts(state), train_state=resume)
    config = _config(state["model_config"], str(path))
    model = model_from_weights(config, state["model"], str(path)).float().eval() if weights else None
    return Checkpoint(path, OURS_SHARDED, config, model, **_facts(state))


def _train_state(state: dict[str, Any], source: Path) -> dict[str, Any]:
    """What resuming needs, its structure checked: a part missing or of the wrong kind is one line."""
    def bad(what: str) -> NanoGPTError:
        return NanoGPTError(f"checkpoint {source}: {what}; it cannot resume a run (sample, eval and export may "
                            "still read its weights)")

    for key, kind in {**TRAIN_STATE, "model": dict, "model_config": dict}.items():
        if key not in state:
            raise bad(f"no {key!r}")
        value = state[key]
        on_disk = key in _ON_DISK and isinstance(value, OnDisk)
        if (not isinstance(value, kind) and not on_disk) or isinstance(value, bool):
            raise bad(f"{key!r} is a {type(value).__name__}, not a {kind.__name__}")
    if state["step"] < 0:
        raise bad(f"step is {state['step']}")
    model = state["model"]
    if isinstance(model, dict) and not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise bad("'model' holds something other than tensors")
    optimizers = ("optimizer", *(k for k in OPTIONAL_TRAIN_STATE if k in state))
    for key in optimizers:
        value = state[key]
        if not isinstance(value, OnDisk) and not (isinstance(value, dict) and {"state", "param_groups"} <= value.keys()):
            raise bad(f"{key!r} is not an optimizer state (no state or param_groups)")
    loader = state["loader"]
    if not all(isinstance(loader.get(k), int) and loader[k] >= 0 for k in ("epoch", "position")):
        raise bad("'loader' needs non-negative integers epoch and position")
    rng = state["rng"].get("torch")
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise bad("'rng' has no torch generator state (a uint8 tensor)")
    try:
        GPTConfig.from_dict(state["model_config"])
    except (TypeError, ValueError) as e:
        raise bad(f"'model_config' is not a GPT config ({e})") from e
    metrics, trackers = state.get("metrics"), state.get("trackers")
    kept = (*TRAIN_STATE, *optimizers[1:], *(k for k in _ON_DISK if isinstance(state.get(k), OnDisk)))
    return {key: state[key] for key in kept} | {
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))} if isinstance(metrics, dict) else {},
        # The experiment-tracker runs to continue; older checkpoints have none.
        "trackers": {k: v for k, v in trackers.items() if isinstance(v, dict)} if isinstance(trackers, dict) else {}}
