"""The `nano-gpt` command line: a thin Typer layer over the library, one module per subcommand."""

import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.logging import RichHandler

from nano_gpt.errors import NanoGPTError

app = typer.Typer(
    name="nano-gpt",
    help="Train, evaluate, sample from and export GPT-2 models.\n\nQuickstart (a character-level GPT of Shakespeare, "
         "minutes on a laptop CPU): nano-gpt train --dataset=tinyshakespeare --tokenizer=char --model=baby",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)
_debug = False


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Log at DEBUG level and show tracebacks on errors."),
) -> None:
    global _debug
    _debug = debug
    # Logs go to stderr, so stdout carries only results (`--json`, samples, step lines). Rich formatting
    # on a terminal; plain unwrapped lines when piped, so grep and log files see whole lines.
    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=debug, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="[%X]"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    # Under torchrun rank 0 speaks for the run from the start: the others' INFO lines would repeat each of its.
    level = logging.DEBUG if debug else logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # Libraries' retry chatter would bury our one-line errors; --debug shows it.
    for noisy in ("urllib3", "httpx", "httpx2", "httpcore", "filelock", "fsspec", "huggingface_hub", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def _register() -> None:
    # Imported here so each subcommand lives in its own module next to this one.
    from nano_gpt.cli import plot
    from nano_gpt.cli import prepare_dataset
    from nano_gpt.cli import export, sample, serve, train
    from nano_gpt.cli import eval as eval_command

    app.command("sample")(sample.sample)
    app.command("train")(train.train)
    app.command("prepare_dataset")(prepare_dataset.prepare_dataset)
    app.command("plot")(plot.plot)
    app.command("export")(export.export)
    app.command("eval")(eval_command.eval_model)
    app.command("serve")(serve.serve)


_register()


def _safe_output() -> None:
    """A terminal or pipe that is not UTF-8 (LANG=C, PYTHONIOENCODING=ascii) gets escapes for the characters it
    cannot show, instead of a UnicodeEncodeError in the middle of a sample."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _one_line(message: str) -> str:
    return " ".join(message.split())


# typer >= 0.26 carries its own copy of click, whose errors derive from TyperException; older typers raise click's.
_PARSER_ERRORS: tuple[type[Exception], ...] = (typer.TyperException,)
_ABORTS: tuple[type[BaseException], ...] = (typer.Abort,)
try:
    import click

    _PARSER_ERRORS += (click.ClickException,)
    _ABORTS += (click.Abort,)
except ImportError:  # pragma: no cover - typer >= 0.26 needs no click
    pass


def _refuse_unusable_arguments(args: list[str]) -> None:
    """Arguments no command can use, refused before anything runs: an empty `--option=` or NANO_GPT_CACHE (an
    empty path would mean the current folder) and bytes that are not UTF-8 (a path Python can open, but that the run log, the
    manifests and the model card, all UTF-8 text, cannot record)."""
    if os.environ.get("NANO_GPT_CACHE", "x").strip() == "":
        raise NanoGPTError("NANO_GPT_CACHE is set but empty; name a folder, or unset it for ~/.cache/nano_gpt")
    for arg in args:
        if arg.startswith("--") and arg.endswith("=") and arg.count("=") == 1:
            raise NanoGPTError(f"{arg} is empty; give it a value or leave the option out")
        try:
            os.fsencode(arg).decode("utf-8")  # the bytes the shell passed (a locale that is not UTF-8 decodes less)
        except UnicodeDecodeError as e:
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            raise NanoGPTError(f"{shown} is not UTF-8; rename the file or folder (nano-gpt records paths in "
                               "UTF-8 logs and manifests)") from e


def _shortened(path: object) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(os.fsencode(text))} bytes)"


class _WatchedOutput:
    """Standard output, noting whether a write to it failed (a full disk, /dev/full, a closed pipe), so that the
    error can be told apart from one writing our own files."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.failed = False

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self.failed = True
            raise

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.failed = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _silence_stdout(stream: TextIO) -> None:
    """Point standard output at /dev/null, so that the interpreter's own flush at exit does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def main() -> None:
    """Entry point of the `nano-gpt` console script and `python -m nano_gpt`.

    Every error a user can cause, the argument parser's own included, ends as one `error:` line (exit 1, or 2
    for a command line the parser refuses); --debug shows the traceback instead. Ctrl-C is a quiet exit 130,
    a reader that closes the pipe early (`| head`) a quiet exit 1.
    """
    global _debug
    _debug = False  # set by _global_options, which a parser error on the top-level options never reaches
    _safe_output()
    output: _WatchedOutput | None = None
    try:
        if sys.stdout is None:  # started with `>&-`: fd 1 would be reused by the next file opened
            raise NanoGPTError("standard output is closed; nano-gpt prints its results there (redirect it to a "
                               "file or /dev/null instead)")
        _refuse_unusable_arguments(sys.argv[1:])
        sys.stdout = output = _WatchedOutput(sys.stdout)  # type: ignore[assignment]
        # standalone_mode=False: the parser's errors reach us instead of being drawn as a usage box.
        exit_code = app(standalone_mode=False)
        sys.stdout.flush()  # here, where a full disk behind stdout can still be reported
    except NanoGPTError as e:
        if _debug:
            raise
        _error(str(e))
    except _PARSER_ERRORS as e:
        if _debug:
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `nano-gpt`: the help is the answer (already printed)
            if e.format_message():
                print(e.format_message(), file=sys.stderr)
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error(e.format_message() + hint, e.exit_code)
    except _ABORTS:  # end of input at a prompt
        _error("aborted")
    except KeyboardInterrupt:  # Ctrl-C before typer runs the command (typer turns a later one into exit 130)
        sys.exit(130)
    except OSError as e:
        if _debug:
            raise
        if (e.strerror or "").startswith("No usable temporary directory"):  # tempfile, as torch loads
            _error("no folder can hold a temporary file (not $TMPDIR, /tmp, /var/tmp, /usr/tmp nor this one): a full "
                   "disk, a read-only file system or `ulimit -f 0`; set TMPDIR to a writable folder")
        if e.errno == errno.ENAMETOOLONG:
            _error(f"a file or folder name is too long for the file system (at most 255 bytes a name, "
                   f"{os.pathconf('/', 'PC_PATH_MAX')} a path): {_shortened(e.filename)}")
        if output is not None and output.failed:
            _silence_stdout(output.stream)
            if isinstance(e, BrokenPipeError):  # the reader has gone (`| head`): nothing to tell, as typer does
                sys.exit(1)
            _error(f"cannot write to standard output ({e.strerror or e})")
        raise
    # Without standalone mode typer returns the code of an Exit (--help: 0, Ctrl-C: 130) instead of exiting.
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


# How long a rank other than 0 keeps its error to itself, waiting for rank 0 to tell it (see `_error`).
OTHER_RANKS_WAIT_S = 20.0


def _error(message: str, exit_code: int = 1) -> NoReturn:
    """Print one `error:` line and exit. Under torchrun every rank meets the same refusal: rank 0 tells it, and
    the launcher then stops the others (SIGTERM), which exit quietly with the same code. A rank whose error
    rank 0 did not meet (its launcher did not stop it within the wait) still tells it, naming its rank."""
    rank = os.environ.get("RANK", "0")
    line = f"error: {_one_line(message)}"
    if rank != "0":
        _torchrun_error_file(line)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(exit_code))
        time.sleep(OTHER_RANKS_WAIT_S)
        line = f"error: {_one_line(f'rank {rank}: {message}')}"
    print(line, file=sys.stderr)
    _torchrun_error_file(line)
    sys.exit(exit_code)


def _torchrun_error_file(line: str) -> None:
    """Put the line where torchrun's failure summary reads a worker's error (else it shows a link to its docs),
    in the structured form it expects (`torch.distributed.elastic` warns about any other)."""
    if error_file := os.environ.get("TORCHELASTIC_ERROR_FILE"):
        record = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps({"message": record}))
