"""Reading a file written by `torch.save`: its CRC-32s checked, then unpickled without running code.

Our single-file checkpoints, the peers' checkpoints and a Hugging Face folder's `pytorch_model.bin` are all such
files; each is read here, with `weights_only=True`, so loading one cannot execute code.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nano_gpt.checkpoint.integrity import verify_torch_file
from nano_gpt.errors import NanoGPTError


def read_torch_file(path: Path, what: str, stand_ins: Sequence[tuple[type, str]] = (), mmap: bool = False) -> Any:
    """What a `torch.save` file holds, its CRC-32s verified first (damage is one line naming the file), then
    unpickled on the CPU with `weights_only=True`: tensors and plain data only, plus `stand_ins` (a class and the
    pickled name it replaces). Failure is one line naming the file; `what` says what it should have been. `mmap`
    maps tensors instead of reading them."""
    verify_torch_file(path)
    try:
        with torch.serialization.safe_globals(list(stand_ins)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the class or function it stopped at; bad bytes are "Unsupported operand".
        if any(s in str(e) for s in ("GLOBAL", "unrecognized function", "Can only")):
            raise NanoGPTError(f"cannot read {path}: it pickles objects other than tensors and plain data, which "
                               "nano-gpt refuses to load (unpickling them could run code)") from e
        raise NanoGPTError(f"cannot read {path}: the file is corrupt or not {what}") from e
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise NanoGPTError(f"cannot read {path}: the file is corrupt or not {what}") from e
