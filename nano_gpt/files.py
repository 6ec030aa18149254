"""Helpers for files from outside: JSON read with every failure as one line, and a killed writer's leftovers
told from a live one's."""

import json
import os
from typing import Any

from nano_gpt.errors import NanoGPTError


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
