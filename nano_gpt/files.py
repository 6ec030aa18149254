"""Files, once for the whole package: JSON from elsewhere read with every failure as one line; atomic writes
under a temp name only this project makes, recorded so that clean-up removes nothing else; OS errors (a full
disk, a file-size limit, a read-only mount) as one line; and a process lock that the OS drops when its holder dies.

Each process that makes a temp file or folder records its name first in `.nano-gpt-temps.<pid>` beside it, and
drops it from the record once the temp is renamed or removed. A record whose process is gone means that process
was killed: `remove_stale_temps` deletes the temps it names (and puts back a folder that `replace_folder` had
moved aside when the kill came before its replacement was in place), and never a file or folder no record names,
whatever it is called.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nano_gpt.errors import NanoGPTError

TEMP_MARK = "nano-gpt-tmp"  # in every temp name: .NAME.nano-gpt-tmp.<pid>.<8 hex digits>
ASIDE_MARK = "nano-gpt-old"  # instead, in the name of a folder moved aside while its replacement is put in place
_TEMP = re.compile(rf"\.(.+)\.({TEMP_MARK}|{ASIDE_MARK})\.(\d+)\.[0-9a-f]{{8}}")
_RECORD = re.compile(r"\.nano-gpt-temps\.(\d+)")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error ends its message
_pending: dict[Path, list[str]] = {}  # folder -> this process's temps there not yet renamed or removed
_pending_lock = threading.Lock()
logger = logging.getLogger(__name__)


def parse_json(raw: bytes | str, where: str, expected: str = "") -> Any:
    """`json.loads`, with each way a file from elsewhere can fail (bad syntax, not UTF-8, nested past Python's
    recursion limit, an integer past its digit limit) one NanoGPTError naming `where`; `expected` ends it."""
    try:
        # Decoded here: json.loads would take UTF-16 or UTF-32 bytes too, which no tool in this field writes.
        return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except json.JSONDecodeError as e:
        reason = f"{e.msg} at line {e.lineno}, column {e.colno}"
    except UnicodeDecodeError as e:
        reason = f"not UTF-8 (byte {e.start})"
    except RecursionError:
        reason = "nested too deeply"
    except ValueError:  # Python's limit on the digits of an integer
        reason = "a number with too many digits"
    raise NanoGPTError(f"{where}: not valid JSON ({reason}){'; ' + expected if expected else ''}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists here (signal 0 checks without sending anything). Temp names carry
    their writer's PID, so the next run can remove what a killed one left and leave a running one's alone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False  # not a PID this system could have
    return True


def temp_path(target: Path, aside: bool = False) -> Path:
    """A new temp name beside `target`, recorded before anything of that name exists; `discard_temp` once it is
    renamed into place or given up. `aside`: the name `replace_folder` moves the old `target` to."""
    mark = ASIDE_MARK if aside else TEMP_MARK
    tmp = target.with_name(f".{target.name}.{mark}.{os.getpid()}.{secrets.token_hex(4)}")
    with _pending_lock:
        names = _pending.setdefault(tmp.parent, [])
        names.append(tmp.name)
        try:
            _write_record(tmp.parent, names)
        except OSError:
            names.remove(tmp.name)
            raise
    return tmp


def discard_temp(tmp: Path) -> None:
    """Delete `tmp` if it is still there (a write that failed) and drop it from this process's record."""
    with contextlib.suppress(OSError):
        _remove(tmp)
    with _pending_lock:
        names = _pending.get(tmp.parent, [])
        if tmp.name in names:
            names.remove(tmp.name)
            with contextlib.suppress(OSError):  # a record left behind names only what is gone: harmless
                _write_record(tmp.parent, names)


def _write_record(folder: Path, names: list[str]) -> None:
    """This process's record in `folder`: only this process writes it, so it is rewritten in place; it exists
    only while a temp of ours does."""
    record = folder / f".nano-gpt-temps.{os.getpid()}"
    if names:
        record.write_text("".join(name + "\n" for name in names))
    else:
        record.unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)  # under torchrun several ranks may be removing it at once
    else:
        path.unlink(missing_ok=True)


def replace_folder(tmp: Path, target: Path, replace: bool = True) -> None:
    """Rename the finished folder `tmp` (a `temp_path`) to `target`. An existing `target` is moved aside to a
    recorded name first and deleted last: a kill between the two renames leaves it aside, and the next
    `remove_stale_temps` in the folder puts it back. With `replace=False` a `target` that is there and not empty
    (another process put it there since the caller looked) is left as it is: FileExistsError."""
    if not replace or not os.path.lexists(target):
        try:
            os.rename(tmp, target)  # onto nothing or an empty folder; the kernel refuses a folder with files
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "written meanwhile by another process", str(target)) from e
            raise
    else:
        old = temp_path(target, aside=True)
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        discard_temp(old)
    fsync_folder(target.parent)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temps that the records of dead processes in `folder` name, then those records; returns what
    was deleted. A name no record holds is never touched, however much it looks like a temp. A folder a dead
    process moved aside (`replace_folder`) goes back to its name if nothing has taken that name since."""
    removed = []
    for record in folder.glob(".nano-gpt-temps.*"):
        match = _RECORD.fullmatch(record.name)
        if match is None or not record.is_file() or record.is_symlink():
            continue
        pid = int(match.group(1))
        if pid_alive(pid):
            continue
        try:
            names = record.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for name in dict.fromkeys(names):
            temp = _TEMP.fullmatch(name)
            if temp is None or int(temp.group(3)) != pid or not os.path.lexists(folder / name):
                continue
            target = folder / temp.group(1)
            if temp.group(2) == ASIDE_MARK and not os.path.lexists(target):
                try:
                    os.rename(folder / name, target)
                    logger.warning("put back %s, which a killed process had moved aside to replace it", target)
                except OSError as e:  # left where it is, never deleted: it is the only copy
                    logger.warning("cannot put back %s from %s (%s)", target, name, e.strerror)
            else:
                _remove(folder / name)
                removed.append(folder / name)
        record.unlink(missing_ok=True)
    return removed


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': sizes in messages."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def os_error_message(e: OSError, path: Path | str, needed: int | None = None) -> str:
    """One line for an OSError met writing `path`: what happened, the space it needs where space is the
    problem, and the fix."""
    path = Path(path)
    reason = e.strerror or e.__class__.__name__
    if e.filename and Path(e.filename) != path and not Path(e.filename).name.startswith("."):
        reason += f": {e.filename}"  # a folder on the way, not a temp name of ours
    need = f"it needs about {format_bytes(needed)}" if needed else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path.parent)
        space = ", ".join(part for part in (need, f"{format_bytes(free)} free there" if free is not None else "")
                          if part)
        return f"cannot write {path} ({reason}{'; ' + space if space else ''}); free some space or choose another folder"
    if e.errno == errno.EFBIG:
        return (f"cannot write {path} (file too large for this process's file-size limit or the file system"
                f"{'; ' + need if need else ''}); raise `ulimit -f` or choose another folder")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path} ({reason}); choose a writable folder"
    return f"cannot write {path} ({reason})"


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def atomic_write(path: Path | str, data: bytes | str | Callable[[IO[bytes]], None], needed: int | None = None) -> None:
    """Write `path` (bytes, text as UTF-8, or through `data(file)`) to a recorded temp beside it, fsync, rename:
    a kill at any moment leaves the old file or the new one. The one way this package replaces a file.

    An OSError (a full disk, a file-size limit, a read-only folder) is one NanoGPTError naming `path` and, where
    space is the problem, the `needed` bytes; the temp is removed and the old file is left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)  # make the rename itself durable
    except Exception as e:
        os_error = os_error_behind(e, tmp)
        if os_error is None:
            raise  # a bug, not the machine
        size = needed if needed is not None or callable(data) else len(data)
        raise NanoGPTError(os_error_message(os_error, path, size)) from e
    finally:
        if tmp is not None:
            discard_temp(tmp)


def os_error_behind(e: BaseException, written: Path | None = None) -> OSError | None:
    """The OSError that `e` is or was raised while handling: a writer such as `torch.save` turns a full disk met
    by the file it writes to into its own RuntimeError, and a Rust writer (safetensors) puts it in its message
    as "(os error N)". `written`, the file being written, lets a short write reported without an errno
    (numpy's `tofile`) be told apart: a file-size limit or a full disk."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current if current.errno is not None else _short_write(current, written)
        if (rust := _RUST_OS_ERROR.search(str(current))) is not None:
            code = int(rust.group(1))
            return OSError(code, os.strerror(code))
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _short_write(e: OSError, written: Path | None) -> OSError:
    """`e` with the errno a short write most likely met: the file reached this process's file-size limit, or the
    disk has (almost) no space left; else `e` as it is."""
    if written is None or not written.exists():
        return e
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and written.stat().st_size >= limit:
        code = errno.EFBIG
    elif (free := _free_bytes(written.parent)) is not None and free < 1 << 20:
        code = errno.ENOSPC
    else:
        return e
    return OSError(code, os.strerror(code))


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so a rename in it survives a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockedError(Exception):
    """Another live process holds the lock; `pid` is its process id when it could be read."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"{path} is locked by {'process ' + str(pid) if pid else 'another process'}")
        self.path, self.pid = path, pid


@dataclass
class ProcessLock:
    """An exclusive `flock` on a file, held until `release` or until the process dies (the OS drops it then, so a
    killed holder never blocks the next). The file holds the holder's PID while held, for the refusal to name."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, path: Path) -> ProcessLock:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise LockedError(path, int(holder) if holder.isdigit() else None) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Empty the file (no stale PID for the next reader) and drop the lock."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = -1
