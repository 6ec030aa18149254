"""The on-disk layout of prepared datasets, shared by `prepare_dataset` and `ShardLoader`.

    DATASET_DIR/<dataset slug>/<split>/shard_000000.bin ...   raw little-endian uint16 tokens, no header
    DATASET_DIR/<dataset slug>/<split>/manifest.json          written last: its presence means "done"

A shard reads back with `np.memmap(path, dtype="<u2", mode="r")`. The manifest holds the dataset,
split, tokenizer, the options that shaped the shards, the token total, and each shard's file name,
token count and sha256.
"""

import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from nano_gpt.data.sources import dataset_slug
from nano_gpt.errors import NanoGPTError

DEFAULT_DATASET_DIR = Path("dataset_cache")
SHARD_DTYPE = np.dtype("<u2")
MANIFEST = "manifest.json"
PROGRESS = "progress.jsonl"  # only while a split is being prepared


def split_dir(dataset_dir: Path, dataset: str, split: str) -> Path:
    return Path(dataset_dir) / dataset_slug(dataset) / split


def shard_name(index: int) -> str:
    return f"shard_{index:06d}.bin"


def prepare_command(dataset: str, split: str, dataset_dir: Path) -> str:
    """The exact command that prepares `split`, for error messages."""
    words = ["nano-gpt", "prepare_dataset", f"--dataset={shlex.quote(dataset)}", f"--splits={split}"]
    if Path(dataset_dir) != DEFAULT_DATASET_DIR:
        words.append(f"--dataset-dir={shlex.quote(str(dataset_dir))}")
    return " ".join(words)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Temp file, fsync, rename: a kill leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def shard_ok(path: Path, tokens: int) -> bool:
    return path.is_file() and path.stat().st_size == tokens * SHARD_DTYPE.itemsize


def first_bad_shard(directory: Path, manifest: dict[str, Any]) -> Path | None:
    """The first shard of `manifest` that is missing or of the wrong size (hashing 20 GB would take minutes)."""
    return next((directory / s["file"] for s in manifest["shards"] if not shard_ok(directory / s["file"], s["tokens"])),
                None)


def read_manifest(dataset_dir: Path, dataset: str, split: str) -> dict[str, Any]:
    """The manifest of a prepared split, its shards checked; else a NanoGPTError naming the command to run."""
    directory = split_dir(dataset_dir, dataset, split)
    path = directory / MANIFEST
    if not path.is_file():
        state = "was not finished" if (directory / PROGRESS).exists() else "is not prepared"
        raise NanoGPTError(f"the {split} split of dataset {dataset!r} {state} in {directory}; "
                           f"run `{prepare_command(dataset, split, dataset_dir)}`")
    manifest = json.loads(path.read_text())
    if (bad := first_bad_shard(directory, manifest)) is not None:
        raise NanoGPTError(f"{bad} is missing or truncated; prepare the split again: "
                           f"`{prepare_command(dataset, split, dataset_dir)} --force`")
    return manifest
