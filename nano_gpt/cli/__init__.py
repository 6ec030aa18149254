"""The `nano-gpt` command line: a thin Typer layer over the library, one module per subcommand."""

import logging
import sys

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
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)
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


def main() -> None:
    """Entry point of the `nano-gpt` console script and `python -m nano_gpt`.

    Every error a user can cause, the argument parser's own included, ends as one `error:` line (exit 1, or 2
    for a command line the parser refuses); --debug shows the traceback instead.
    """
    global _debug
    _debug = False  # set by _global_options, which a parser error on the top-level options never reaches
    _safe_output()
    try:
        # standalone_mode=False: the parser's errors reach us instead of being drawn as a usage box.
        exit_code = app(standalone_mode=False)
    except NanoGPTError as e:
        if _debug:
            raise
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(1)
    except _PARSER_ERRORS as e:
        if _debug:
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `nano-gpt`: the help is the answer (already printed)
            if e.format_message():
                print(e.format_message(), file=sys.stderr)
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"error: {_one_line(e.format_message())}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except _ABORTS:  # end of input at a prompt
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    # Without standalone mode typer returns the code of an Exit (--help: 0, Ctrl-C: 130) instead of exiting.
    sys.exit(exit_code if isinstance(exit_code, int) else 0)
