"""Sharded checkpoints: a folder written by every rank at once with `torch.distributed.checkpoint` (DCP).

FSDP keeps each parameter, its gradient and its AdamW state split over the ranks, so no rank holds a whole
model to save. Each rank writes its own shards into `checkpoint_NNNNNN/` (`__0_0.distcp`, `__1_0.distcp`,
... and the `.metadata` index that says which slice of which tensor lies where). The folder is first
written under a hidden temp name and renamed when every rank has finished, so a checkpoint is complete or
absent: a kill mid-save leaves the previous one as the newest.

Because the index records global shapes and offsets, a folder written by N ranks is read by any number:
M ranks each read their own slices (resharding), and one process reads whole tensors (`read_sharded`),
which is how `sample`, `eval` and `export` consolidate a sharded checkpoint on the fly.

Nothing in a folder can run code when read: the index is unpickled with only DCP's own metadata classes
allowed, and every other entry is checked with `torch.load(weights_only=True)` before DCP reads it. Damage is
noticed before anything is read: the folder carries a CRC-32 of each file (`checksums.json`, see `integrity`),
checked once per read, each rank checking its share.

This module imports `torch.distributed.checkpoint` (and with it FSDP), so the reader imports it only for a
sharded folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import json
import pickle
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import (CheckpointException, DefaultLoadPlanner, FileSystemReader, Metadata,
                                          TensorStorageMetadata)
from torch.distributed.checkpoint.metadata import StorageMeta

from nano_gpt.checkpoint.integrity import damage_error, damaged_files, folder_checksums
from nano_gpt.checkpoint.layout import CHECKSUMS, METADATA, is_sharded
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import discard_temp, os_error_behind, os_error_message, replace_folder, temp_path

# What DCP's index pickles: its metadata dataclasses, torch sizes, dtypes and layouts, and a path.
_INDEX_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "StorageMeta", "MetadataIndex", "TensorProperties",
                                              "TensorStorageMetadata", "ChunkStorageMetadata", "BytesStorageMetadata",
                                              "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "torch": {"Size"},
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        allowed = is_dtype or name in _INDEX_CLASSES.get(module, ())
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")
        return super().find_class(module, name)


class _SafeReader(FileSystemReader):
    """DCP's file reader, with its index unpickled through an allow-list instead of plain `pickle.load`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(Path(self.path) / METADATA, "rb") as f:
            metadata = _IndexUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{METADATA} holds a {type(metadata).__name__}, not a checkpoint index")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafePlanner(DefaultLoadPlanner):
    """DCP's load planner, refusing entries that pickle anything but tensors and plain data: DCP itself
    unpickles them with `weights_only=False`, so each is first read with `weights_only=True`, which fails on
    anything else (the same bytes then reference only the classes that check allowed)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)
        value.seek(0)
        super().load_bytes(read_item, value)


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """One-line errors for a damaged or foreign folder; quiet about loading without a process group, which
    is what one process reading a checkpoint means."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            yield
    except NanoGPTError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's own exception, wrapping each rank's, is a BaseException
        cause = next(iter(e.failures.values()))[0] if isinstance(e, CheckpointException) and e.failures else e
        if isinstance(cause, pickle.UnpicklingError):
            why = "it pickles objects other than tensors and plain data, which nano-gpt refuses to load (unpickling " \
                  "them could run code)"
        else:
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            why = f"it is damaged, incomplete or does not fit ({cause.__class__.__name__}: {first_line[:300]})"
        raise NanoGPTError(f"cannot read the sharded checkpoint {path}: {why}") from e


def open_sharded(path: Path) -> Metadata:
    """The index of a sharded folder, once its files have been checked against their checksums (the one check
    of a read: every later read of this folder trusts it). An emptied folder, or one without its index, is
    damaged."""
    if not path.is_dir():
        raise NanoGPTError(f"{path} is not a sharded checkpoint folder")
    if not is_sharded(path):
        what = "empty" if not any(path.iterdir()) else f"missing its index ({METADATA})"
        raise NanoGPTError(f"the sharded checkpoint {path} is damaged: the folder is {what}")
    damaged = damaged_files(path)
    if damaged:
        raise damage_error(path, damaged)
    with _reading(path):
        return _SafeReader(path).read_metadata()


def _put(tree: dict | list, keys: tuple, value: Any) -> None:
    """Set tree[k0][k1]... = value, creating dicts for string keys and lists for integer ones."""
    *parents, last = keys
    node: Any = tree
    for key, child_key in zip(parents, [*parents[1:], last]):
        child = [] if isinstance(child_key, int) else {}
        if isinstance(node, list):
            node.extend([None] * (key + 1 - len(node)))
            node[key] = child if node[key] is None else node[key]
        else:
            node.setdefault(key, child)
        node = node[key]
    if isinstance(node, list):
        node.extend([None] * (last + 1 - len(node)))
    node[last] = value


def stored_keys(metadata: Metadata) -> set[str]:
    """The entries a sharded checkpoint holds (empty dicts are not stored, so they are not among them)."""
    return {metadata.planner_data.get(fqn, (fqn,))[0] for fqn in metadata.state_dict_metadata}


def read_sharded(path: Path, metadata: Metadata, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The entries `keys` (default all) of a sharded checkpoint opened with `open_sharded`, as whole tensors and
    plain data on the CPU, in this process alone: however many ranks wrote it, their shards are put together."""
    wanted = None if keys is None else set(keys)
    state: dict[str, Any] = {}
    for fqn, item in metadata.state_dict_metadata.items():
        where = metadata.planner_data.get(fqn, (fqn,))
        if wanted is None or where[0] in wanted:
            tensor = isinstance(item, TensorStorageMetadata)
            # None stands for plain data, which DCP replaces with what was saved.
            _put(state, where, torch.empty(item.size, dtype=item.properties.dtype) if tensor else None)
    with _reading(path):
        dcp.load(state, storage_reader=_SafeReader(path), planner=_SafePlanner(), no_dist=True)
    return state


def load_sharded(path: Path | str, state: dict[str, Any]) -> None:
    """Fill `state` in place from a sharded checkpoint that `open_sharded` checked: DTensors with this rank's
    slices, plain tensors whole. Every rank of the process group calls this."""
    path = Path(path)
    with _reading(path):
        dcp.load(state, storage_reader=_SafeReader(path), planner=_SafePlanner())


def _tensor_bytes(state: Any) -> int:
    """The bytes of every tensor in `state` (a DTensor counts whole: all ranks' shards together)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(value) for value in state)
    return 0


def save_sharded(path: Path | str, state: dict[str, Any]) -> None:
    """Write `state` (DTensors are written by the rank that holds each slice, anything else once) to the folder
    `path`, atomically as a whole. Every rank of the process group calls this."""
    path = Path(path)
    distributed = dist.is_initialized()
    # Rank 0 makes and records the temp folder's name (so a later run can tell it is stale) and tells the others.
    tmp_name = [temp_path(path).name if not distributed or dist.get_rank() == 0 else ""]
    if distributed:
        dist.broadcast_object_list(tmp_name, src=0)
    tmp = path.with_name(tmp_name[0])
    # Returns once every rank's files are written and synced and the coordinator has written the index.
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process")
            dcp.save(state, checkpoint_id=tmp, no_dist=not distributed)
    except CheckpointException as e:  # every rank gets every rank's failures
        discard_temp(tmp)
        os_error = next(filter(None, (os_error_behind(failure) for failure, _ in e.failures.values())), None)
        if os_error is None:
            raise
        raise NanoGPTError(os_error_message(os_error, path, _tensor_bytes(state))) from e
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    checksums = folder_checksums(tmp, rank, world_size)  # each rank reads its share of the files
    if distributed:
        shares: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(shares, checksums)
        checksums = {name: crc for share in shares for name, crc in share.items()}
    if not distributed or dist.get_rank() == 0:
        try:
            with open(tmp / CHECKSUMS, "wb") as f:  # inside the temp folder, which is renamed as a whole
                f.write(json.dumps(checksums, sort_keys=True).encode())
                f.flush()
                os.fsync(f.fileno())
            replace_folder(tmp, path)  # replaces the same step written before (a resumed run overtaking it)
        except OSError as e:
            raise NanoGPTError(os_error_message(e, path)) from e
        finally:
            discard_temp(tmp)  # gone already once renamed into place
    if distributed:
        dist.barrier()  # no rank reports the checkpoint before it is in place
