"""Options and model loading shared by several subcommands."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nano_gpt.checkpoint import model_from_checkpoint
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.pretrained import load_pretrained

PretrainedOption = Annotated[
    Optional[str],
    typer.Option(help="GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hub repo id, or a local folder."),
]
CheckpointOption = Annotated[Optional[Path], typer.Option(help="A training checkpoint (checkpoint_NNNNNN.bin).")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]


def load_model(pretrained: str | None, checkpoint: Path | None, default: str | None = "gpt2") -> GPT:
    """The model named by --pretrained or --checkpoint (at most one), else the `default` pretrained."""
    if pretrained is not None and checkpoint is not None:
        raise NanoGPTError("pass either --pretrained or --checkpoint, not both")
    if checkpoint is not None:
        return model_from_checkpoint(checkpoint)
    if pretrained is None and default is None:
        raise NanoGPTError("pass --pretrained=NAME_OR_FOLDER or --checkpoint=FILE")
    return load_pretrained(pretrained or default)
