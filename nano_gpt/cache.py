"""The project's download cache (`NANO_GPT_CACHE`, default ~/.cache/nano_gpt).

Files are fetched once, checked against a sha256 when one is known, and written atomically. With no
network, the error names the URL and the exact path where the file can be placed by hand.
"""

import hashlib
import logging
import os
import shutil
import urllib.request
from pathlib import Path

from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """The project's download cache: $NANO_GPT_CACHE, else ~/.cache/nano_gpt. An empty NANO_GPT_CACHE is refused
    rather than read as the current folder."""
    value = os.environ.get("NANO_GPT_CACHE")
    if value is not None and not value.strip():
        raise NanoGPTError("NANO_GPT_CACHE is set but empty; set it to a folder, or unset it for ~/.cache/nano_gpt")
    return Path(value if value is not None else Path.home() / ".cache" / "nano_gpt").expanduser()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so large files don't fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(relative_path: str) -> Path:
    """Where `cached_download` keeps `relative_path` (which may not be there yet)."""
    return cache_dir() / relative_path


def cached_download(url: str, relative_path: str, sha256: str | None = None, timeout: float = 30) -> Path:
    """The cached copy of `url` at `cache_dir()/relative_path`, downloading it if missing."""
    path = cached_path(relative_path)
    if path.exists() and not path.is_file():
        raise NanoGPTError(f"{path} is in the download cache but is not a file; delete it so it is downloaded again")
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # the cache under a regular file, or read-only
            raise NanoGPTError(f"cannot create the download cache folder {path.parent} ({e.strerror}); set "
                               "NANO_GPT_CACHE to a writable folder") from e
        logger.info("downloading %s to %s", url, path)
        fix = f"fetch it by hand and place it at {path}"
        try:
            response = urllib.request.urlopen(url, timeout=timeout)
        except OSError as e:  # URLError and timeouts are OSErrors
            raise NanoGPTError(f"cannot download {url} ({e}); {fix}") from e
        with response:
            try:  # a recorded temp per process: several ranks may download at once
                atomic_write(path, lambda f: shutil.copyfileobj(response, f))
            except NanoGPTError as e:  # a full disk, or the connection lost mid-way
                raise NanoGPTError(f"cannot download {url}: {e}; {fix}") from e
    if sha256 is not None and (actual := sha256_file(path)) != sha256:
        raise NanoGPTError(f"{path} has sha256 {actual}, expected {sha256}; delete it so it is downloaded again")
    return path
