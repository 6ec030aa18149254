"""`python -m nano_gpt` and the `nano-gpt` script: the CLI, with a Ctrl-C while its modules load a quiet exit 130,
as a Ctrl-C is later."""

import sys


def run() -> None:
    try:
        from nano_gpt.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
