"""The `nano-gpt` command line: a thin Typer layer over the library, one module per subcommand."""

import logging
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from nano_gpt.errors import NanoGPTError

app = typer.Typer(
    name="nano-gpt",
    help="Train, evaluate, sample from and export GPT-2 models.",
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
    for noisy in ("urllib3", "httpx", "httpcore", "filelock", "fsspec", "huggingface_hub", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def _register() -> None:
    # Imported here so each subcommand lives in its own module next to this one.
    from nano_gpt.cli import plot
    from nano_gpt.cli import prepare_dataset
    from nano_gpt.cli import export, sample, train
    from nano_gpt.cli import eval as eval_command

    app.command("sample")(sample.sample)
    app.command("train")(train.train)
    app.command("prepare_dataset")(prepare_dataset.prepare_dataset)
    app.command("plot")(plot.plot)
    app.command("export")(export.export)
    app.command("eval")(eval_command.eval_model)


_register()


def main() -> None:
    """Entry point of the `nano-gpt` console script and `python -m nano_gpt`."""
    try:
        app()
    except NanoGPTError as e:
        if _debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
