"""File-system helpers shared by everything that writes: telling a killed writer's leftovers from a live one's."""

import os


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
