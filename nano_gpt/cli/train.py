"""`nano-gpt train`: the GPT-2 training recipe, on one device or under torchrun.

Its options are built from `TrainConfig`'s fields (type, default and help), so each field has exactly one
option and the two cannot drift apart.
"""

import dataclasses
import inspect
import signal
import sys
import typing
from typing import Annotated, Any, Optional

import typer

from nano_gpt.errors import NanoGPTError
from nano_gpt.train.config import TrainConfig

# Spellings of other tools that keep working, hidden from --help: the seed project's `--checkpoint=FILE`.
_ALIASES = {"checkpoint": "resume"}


def option_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _parameter(field: dataclasses.Field) -> inspect.Parameter:
    meta = field.metadata
    names = [option_name(field), *meta.get("aliases", ())]
    kind = field.type if typing.get_origin(field.type) is not None or field.default is not None else Optional[field.type]
    option = typer.Option(*names, help=meta["help"], show_default=field.default is not None)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                             annotation=Annotated[kind, option])


def train(**options: Any) -> None:
    """Train GPT-2 from scratch (or fine-tune --pretrained weights) on a dataset, preparing it first if needed.

    Quickstart, a character-level GPT of Shakespeare in minutes on a laptop CPU: `nano-gpt train --dataset=tinyshakespeare --tokenizer=char --model=baby`.

    Under `torchrun --nproc_per_node=N $(which nano-gpt) train ...` it trains with DDP. Ctrl-C writes a
    checkpoint and stops; `--resume=auto` continues exactly where it stopped.
    """
    from nano_gpt.train import train as run_training  # the loop imports torch; --help needs only TrainConfig

    for alias, name in _ALIASES.items():
        value = options.pop(alias)
        if value is not None:
            if options[name] is not None:
                raise NanoGPTError(f"--{alias} is another name for --{name}; pass one of them")
            options[name] = value
    result = run_training(TrainConfig(**options))
    if result.main_process:
        print(f"last step: {result.last_step} | checkpoint: {result.checkpoint}")
    if result.interrupted is not None:
        if result.main_process:
            what = "Ctrl-C" if result.interrupted == signal.SIGINT else signal.Signals(result.interrupted).name
            print(f"stopped by {what}; continue with the same command plus --resume=auto", file=sys.stderr)
        raise typer.Exit(128 + result.interrupted)  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them


_hidden = [inspect.Parameter(alias, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[Optional[str], typer.Option(hidden=True)]) for alias in _ALIASES]
train.__signature__ = inspect.Signature([_parameter(f) for f in dataclasses.fields(TrainConfig)] + _hidden)
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()} | {"return": None}
