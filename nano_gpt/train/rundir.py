"""The run folder: one run per --checkpoint-dir, checked to be writable before anything trains.

A new run never silently empties another run's log or leaves its checkpoints for `--resume=auto` to
pick up later; temp files left by killed processes are removed when the next run starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

from nano_gpt.checkpoint import checkpoints_in, latest_checkpoint
from nano_gpt.distributed import torchrun_ranks
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import pid_alive
from nano_gpt.train.config import TrainConfig

logger = logging.getLogger(__name__)

_TEMP = re.compile(r"\..+\.tmp(\d+)")  # what the checkpoint writer, save_sharded (a folder) and RunLog write first


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the half-written temp files and folders of processes that no longer run."""
    for path in folder.glob(".*.tmp*"):
        match = _TEMP.fullmatch(path.name)
        if match and not pid_alive(int(match.group(1))):
            logger.info("removing %s, left by a killed run", path)
            _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)  # under torchrun every rank may be removing it at once
    else:
        path.unlink(missing_ok=True)


def _os_reason(e: OSError) -> str:
    return e.strerror or e.__class__.__name__


def probe_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` and write, sync and delete a file in it: permissions alone do not tell (read-only
    mounts, full disks, ACLs), and a run must not train for hours and then fail at its first save."""
    probe = folder / f".nano_gpt_probe.tmp{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except (FileExistsError, NotADirectoryError) as e:
        raise NanoGPTError(f"{flag}={folder} is not writable: {e.filename or folder} is a file, not a folder") from e
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)  # a full disk can fail the write after creating the file
        raise NanoGPTError(f"{flag}={folder} is not writable ({_os_reason(e)}: {e.filename or folder})") from e
    try:
        probe.unlink()
    except OSError as e:
        raise NanoGPTError(f"{flag}={folder}: cannot delete files in it ({_os_reason(e)})") from e


def probe_writable_file(path: Path, flag: str) -> None:
    """An existing file opened for appending (which changes nothing), else its folder probed."""
    if path.is_dir():
        raise NanoGPTError(f"{flag}={path} is a folder; pass a file name")
    probe_writable_folder(path.parent, flag)
    if path.exists():
        try:
            open(path, "ab").close()
        except OSError as e:
            raise NanoGPTError(f"{flag}={path} is not writable ({_os_reason(e)})") from e


def _existing_run(checkpoint_dir: Path, log_file: Path) -> list[Path]:
    found = checkpoints_in(checkpoint_dir)
    if log_file.is_file() and log_file.stat().st_size > 0:
        found.append(log_file)
    return found


def prepare(config: TrainConfig) -> Path | None:
    """Check the run's folder and log before step 0; returns the checkpoint to resume from, if any. `config` is
    resolved (`TrainConfig.resolved`): its log file is decided."""
    checkpoint_dir = Path(config.checkpoint_dir)
    log_file = Path(config.log_file)
    probe_writable_folder(checkpoint_dir, "--checkpoint-dir")
    probe_writable_file(log_file, "--log-file")
    for folder in {checkpoint_dir, log_file.parent}:
        remove_stale_temp_files(folder)
    if config.resume is None:
        existing = _existing_run(checkpoint_dir, log_file)
        if existing and not config.overwrite:
            names = ", ".join(p.name for p in existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise NanoGPTError(f"{checkpoint_dir} already holds a run ({names}); continue it with --resume=auto, "
                               "pick another --checkpoint-dir, or pass --overwrite to delete it and start again")
        ranks = torchrun_ranks()
        if existing and (ranks is None or ranks.rank == 0):
            logger.warning("--overwrite: deleting %d files of the previous run in %s", len(existing), checkpoint_dir)
            for path in existing:
                _remove(path)
        return None
    if config.resume == "auto":
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            logger.info("--resume=auto: no checkpoint in %s, starting from scratch", checkpoint_dir)
        return path
    path = Path(config.resume)
    if not path.exists():  # a damaged folder or file is read, and refused by name, by the checkpoint reader
        raise NanoGPTError(f"--resume={path}: checkpoint not found; pass a checkpoint_NNNNNN.bin, a sharded "
                           "checkpoint_NNNNNN folder, or --resume=auto")
    return path
