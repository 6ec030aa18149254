"""`python -m nano_gpt` and the `nano-gpt` script: the CLI, with a Ctrl-C while its modules load a quiet exit 130,
as a Ctrl-C is later."""

import os
import signal
import sys

# Commands that write files: their Ctrl-C goes through Python's KeyboardInterrupt, so that their clean-up runs.
_WRITERS = {"train", "export", "prepare_dataset", "serve"}


def _quit(signum: int, frame: object) -> None:
    """Ctrl-C in a command that writes no file: exit 130 at once. A KeyboardInterrupt raised inside a library's
    import (torch and numpy load lazily while a model is read) can leave that library half-made, and the
    next use of it then fails with a traceback instead of the quiet exit a Ctrl-C promises."""
    try:
        sys.stdout.flush()  # what was printed so far still reaches a pipe or file
    except Exception:  # noqa: BLE001 - an interrupted write: nothing more can be saved
        pass
    os._exit(130)


def run() -> None:
    if not _WRITERS & set(sys.argv[1:]):
        signal.signal(signal.SIGINT, _quit)
    try:
        from nano_gpt.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
