"""The run folder: one run per --checkpoint-dir, one live process per folder and log, checked to be writable
before anything trains.

A run takes an OS lock on its folder and on its log for its lifetime (rank 0 under torchrun), so a second
process on the same run is refused with the live one's PID, and a killed run never blocks the next. A new run
never silently empties another run's log or leaves its checkpoints for `--resume=auto` to pick up later;
`--overwrite` deletes only a previous run's files (its checkpoints, and a log that a run of ours began), and
only once every check that can fail has passed. Temps that killed processes recorded are removed at start.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nano_gpt.checkpoint import checkpoints_in, latest_checkpoint
from nano_gpt.checkpoint.layout import not_ours
from nano_gpt.distributed import torchrun_ranks
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import LockedError, ProcessLock, discard_temp, remove_stale_temps, temp_path
from nano_gpt.runlog import is_run_log
from nano_gpt.train.config import TrainConfig

logger = logging.getLogger(__name__)

RUN_LOCK = ".nano-gpt-run.lock"  # in the run folder; held by the live run's process


def _os_reason(e: OSError) -> str:
    return e.strerror or e.__class__.__name__


def probe_writable_folder(folder: Path, flag: str) -> None:
    """Create `folder` and write, sync and delete a file in it: permissions alone do not tell (read-only
    mounts, full disks, ACLs), and a run must not train for hours and then fail at its first save."""
    probe = None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = temp_path(folder / "nano-gpt-probe")  # recorded: what a kill leaves here, the next run removes
            with open(probe, "wb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())  # a full disk can fail here, after the file was created
        except (FileExistsError, NotADirectoryError) as e:
            blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
            raise NanoGPTError(f"{flag}={folder} is not writable: {blocking} is a file, not a folder") from e
        except OSError as e:
            where = folder if e.filename is None or Path(e.filename).parent == folder else e.filename
            raise NanoGPTError(f"{flag}={folder} is not writable ({_os_reason(e)}: {where})") from e
        try:
            probe.unlink()
        except OSError as e:
            raise NanoGPTError(f"{flag}={folder}: cannot delete files in it ({_os_reason(e)})") from e
    finally:
        if probe is not None:
            discard_temp(probe)


def probe_writable_file(path: Path, flag: str) -> None:
    """An existing file opened for appending (which changes nothing), else its folder probed."""
    if path.is_dir():
        raise NanoGPTError(f"{flag}={path} is a folder; pass a file name")
    if path.exists() and not path.is_file():
        raise NanoGPTError(f"{flag}={path} is not a regular file (a device, a pipe or a socket); name a file, such as "
                           f"{flag}=train_log.jsonl")
    probe_writable_folder(path.parent, flag)
    if path.exists():
        try:
            open(path, "ab").close()
        except OSError as e:
            raise NanoGPTError(f"{flag}={path} is not writable ({_os_reason(e)})") from e


def _lock(path: Path, what: str, fix: str) -> ProcessLock | None:
    try:
        return ProcessLock.acquire(path)
    except LockedError as e:
        holder = f"PID {e.pid}" if e.pid else "another process"
        raise NanoGPTError(f"{what} is in use by a run that is still going ({holder}); wait for it to end or stop "
                           f"it, or {fix}") from e
    except OSError as e:  # a file system without locks (some network mounts)
        logger.warning("cannot lock %s (%s); make sure no other run uses %s", path, _os_reason(e), what)
        return None


@dataclass
class RunDir:
    """A prepared run folder: the checkpoint to resume from, the locks held while the run lives, and the previous
    run's files that --overwrite deletes once everything that can fail has passed (`clear_previous`)."""

    resume_file: Path | None
    previous: list[Path] = field(default_factory=list)
    locks: list[ProcessLock] = field(default_factory=list)

    def clear_previous(self) -> None:
        if self.previous:
            logger.warning("--overwrite: deleting %d files of the previous run", len(self.previous))
        for path in self.previous:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.previous = []

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []


def _previous_run(checkpoint_dir: Path, log_file: Path) -> list[Path]:
    found = checkpoints_in(checkpoint_dir)
    if log_file.is_file() and log_file.stat().st_size > 0:
        found.append(log_file)
    return found


def prepare(config: TrainConfig) -> RunDir:
    """Check and lock the run's folder and log before step 0; deletes nothing. `config` is resolved
    (`TrainConfig.resolved`): its log file is decided. The caller releases the locks when the run ends."""
    checkpoint_dir = Path(config.checkpoint_dir)
    log_file = Path(config.log_file)
    probe_writable_folder(checkpoint_dir, "--checkpoint-dir")
    probe_writable_file(log_file, "--log-file")
    ranks = torchrun_ranks()
    run = RunDir(resume_file=None)
    if ranks is None or ranks.rank == 0:  # rank 0 speaks for the run: it holds the locks and cleans up
        try:
            for path, what, fix in ((checkpoint_dir / RUN_LOCK, f"--checkpoint-dir={checkpoint_dir}",
                                     "choose another --checkpoint-dir"),
                                    (log_file.with_name(f".{log_file.name}.nano-gpt-lock"), f"--log-file={log_file}",
                                     "choose another --log-file")):
                if (lock := _lock(path, what, fix)) is not None:
                    run.locks.append(lock)
            for folder in {checkpoint_dir, log_file.parent}:
                for path in remove_stale_temps(folder):
                    logger.info("removed %s, left by a killed run", path)
            run.resume_file, run.previous = _check(config, checkpoint_dir, log_file)
        except BaseException:
            run.release()
            raise
    else:
        run.resume_file, _ = _check(config, checkpoint_dir, log_file)
    return run


def _check(config: TrainConfig, checkpoint_dir: Path, log_file: Path) -> tuple[Path | None, list[Path]]:
    """(the checkpoint to resume from, the previous run's files to delete with --overwrite)."""
    if log_file.is_file() and log_file.stat().st_size > 0 and not is_run_log(log_file):
        raise NanoGPTError(f"--log-file={log_file} holds a file that no nano-gpt run began; training never replaces "
                           "or appends to it, --overwrite included: choose another --log-file")
    if config.resume is None:
        previous = _previous_run(checkpoint_dir, log_file)
        if previous and not config.overwrite:
            names = ", ".join(p.name for p in previous[:3]) + (f" and {len(previous) - 3} more" if len(previous) > 3 else "")
            raise NanoGPTError(f"{checkpoint_dir} already holds a run ({names}); continue it with --resume=auto, "
                               "pick another --checkpoint-dir, or pass --overwrite to delete it and start again")
        for path in previous:  # --overwrite deletes what a run wrote, never a file by its name alone
            if path != log_file and (why := not_ours(path)) is not None:
                raise NanoGPTError(f"{path} is named like a checkpoint but is not one that nano-gpt writes ({why}); "
                                   "--overwrite deletes only a previous run's files: move it away, or choose another "
                                   "--checkpoint-dir")
        return None, previous
    if config.resume == "auto":
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            logger.info("--resume=auto: no checkpoint in %s, starting from scratch", checkpoint_dir)
        return path, []
    path = Path(config.resume)
    if not path.exists():  # a damaged folder or file is read, and refused by name, by the checkpoint reader
        raise NanoGPTError(f"--resume={path}: checkpoint not found; pass a checkpoint_NNNNNN.bin, a sharded "
                           "checkpoint_NNNNNN folder, or --resume=auto")
    return path, []
