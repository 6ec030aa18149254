"""Where checkpoints lie in a run folder, told by name alone (no torch import: the run folder is checked before
anything heavy is loaded).

A run folder holds `checkpoint_NNNNNN.bin` files and, under FSDP, `checkpoint_NNNNNN/` folders. A folder counts
as a checkpoint whatever it holds: one without its index or emptied is a damaged checkpoint that the reader
refuses by name, never one to step over silently to an older one. Deleting one (`--overwrite`) asks more than
its name: `not_ours` tells a file or folder that only looks like a checkpoint by its name.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

METADATA = ".metadata"  # DCP's index of a sharded folder, written last by the coordinating rank
CHECKSUMS = "checksums.json"  # CRC-32 of every other file of a sharded folder (see `integrity`)
_NAME = re.compile(r"checkpoint_(\d+)(\.bin)?")
_DCP_FILE = re.compile(r"__\d+_\d+\.distcp")  # one rank's shard file in a sharded folder


def checkpoint_path(checkpoint_dir: Path | str, step: int, sharded: bool = False) -> Path:
    """Where the checkpoint after `step` goes: checkpoint_{step:06d}.bin, or the folder checkpoint_{step:06d}."""
    return Path(checkpoint_dir) / f"checkpoint_{step:06d}{'' if sharded else '.bin'}"


def is_checkpoint_name(name: str) -> bool:
    """Whether `name` is one our runs give a checkpoint: checkpoint_NNNNNN.bin, or checkpoint_NNNNNN (a folder)."""
    return _NAME.fullmatch(name) is not None


def not_ours(path: Path) -> str | None:
    """Why `path`, named like a checkpoint, is not one this package writes (None when it has the shape of one):
    a `torch.save` zip archive, or a folder holding only DCP's files and our checksums (emptied, too). Damage
    inside a file does not change its shape; a file that is not an archive at all is not ours to delete."""
    if path.is_symlink():
        return "a symbolic link"
    if path.is_dir():
        others = sorted(p.name for p in path.iterdir()
                        if not (p.is_file() and (p.name in (METADATA, CHECKSUMS) or _DCP_FILE.fullmatch(p.name))))
        return f"a folder holding {', '.join(others[:3])}" if others else None
    try:
        with zipfile.ZipFile(path) as archive:
            return None if any(name.endswith("/data.pkl") for name in archive.namelist()) else "a zip archive"
    except (zipfile.BadZipFile, OSError):
        return "not a torch.save archive"


def is_sharded(path: Path | str) -> bool:
    """Whether `path` is a sharded checkpoint folder with its index (complete, as far as names tell)."""
    return (Path(path) / METADATA).is_file()


def checkpoints_in(checkpoint_dir: Path | str) -> list[Path]:
    """The checkpoints in `checkpoint_dir`, files and sharded folders (damaged ones too), oldest step first."""
    found = [(int(m.group(1)), p.stat().st_mtime, p) for p in Path(checkpoint_dir).glob("checkpoint_*")
             if (m := _NAME.fullmatch(p.name)) and (p.is_file() if m.group(2) else p.is_dir())]
    return [p for _, _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: Path | str) -> Path | None:
    """The checkpoint with the highest step in `checkpoint_dir`, if any (of a file and a folder for one step, the
    newer)."""
    found = checkpoints_in(checkpoint_dir)
    return found[-1] if found else None
