"""Checksums that make damage on disk (a flipped bit, a truncated or emptied file) an error naming the file.

Which checksum, and why CRC-32: it catches every single-bit flip and every burst of up to 32 bits, with a
2**-32 chance of missing random damage, at the speed the disk reads; checkpoints need protection from
storage faults, not from an adversary (who could rewrite any checksum beside the data).

- A `torch.save` file (our `checkpoint_NNNNNN.bin`, and the peers' files) is a zip archive in which torch
  already writes a CRC-32 of every record; `torch.load` never checks them, so `verify_torch_file` does, in one
  streamed pass before the file is unpickled. A file saved with torch's CRCs turned off (every CRC 0) or in
  torch's old non-zip format has none and loads as before.
- A sharded folder's files are written by DCP, which records no checksum: `folder_checksums` computes a CRC-32
  of each (every rank a share of them) into `checksums.json`, written before the folder is renamed into place;
  `damaged_files` checks them, once per read. A folder from before checksums has none and loads as before.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from nano_gpt.checkpoint.layout import CHECKSUMS
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import parse_json

_CHUNK = 16 << 20


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify_torch_file(path: Path) -> None:
    """Check every record of a `torch.save` zip archive against its CRC-32; damage is one NanoGPTError naming
    the file and the record. Not a zip (torch's legacy format, or no torch file at all): nothing to check here,
    the unpickler judges it."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(r.CRC == 0 for r in records):  # saved with torch.serialization.set_crc32_options(False)
                return
            for record in records:
                with archive.open(record) as f:  # zipfile checks the CRC-32 at the record's end
                    while f.read(_CHUNK):
                        pass
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise NanoGPTError(f"{path} is damaged ({e}): its contents changed after it was written") from e
    except OSError as e:
        raise NanoGPTError(f"cannot read {path} ({e.strerror or e})") from e


def folder_checksums(folder: Path, rank: int = 0, world_size: int = 1) -> dict[str, int]:
    """The CRC-32 of this rank's share of the files in `folder` (every `world_size`-th, sorted by name), so that
    the ranks of a run read the folder once between them."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    return {name: _crc32(folder / name) for name in names[rank::world_size]}


def damaged_files(folder: Path) -> list[str]:
    """The files of a sharded folder that are missing or whose CRC-32 differs from `checksums.json`, as
    "name (why)"; none for a folder written before checksums."""
    record = folder / CHECKSUMS
    if not record.is_file():
        return []
    try:
        expected = parse_json(record.read_bytes(), str(record), "it should map each file to its CRC-32")
    except OSError as e:
        return [f"{CHECKSUMS} ({e.strerror or e})"]
    except NanoGPTError:
        return [f"{CHECKSUMS} (not valid JSON)"]
    if not isinstance(expected, dict) or not all(isinstance(v, int) for v in expected.values()):
        return [f"{CHECKSUMS} (not a map of file names to CRC-32s)"]
    damaged = []
    for name in sorted(expected):
        file = folder / name
        try:
            if _crc32(file) != expected[name]:
                damaged.append(f"{name} (fails its CRC-32 check)")
        except FileNotFoundError:
            damaged.append(f"{name} (missing)")
        except OSError as e:
            damaged.append(f"{name} ({e.strerror or e})")
    return damaged


def damage_error(folder: Path, damaged: list[str]) -> NanoGPTError:
    shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
    return NanoGPTError(f"the sharded checkpoint {folder} is damaged: {shown}; its contents changed after it was "
                        "written")
