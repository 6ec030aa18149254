"""Options and model loading shared by several subcommands.

Nothing here imports torch at module level: the options are built for --help, the loaders import where they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from nano_gpt.defaults import DTYPE_CHOICES
from nano_gpt.errors import NanoGPTError

if TYPE_CHECKING:
    from nano_gpt.model import GPT
    from nano_gpt.tokenizer import Tokenizer

PretrainedOption = Annotated[
    Optional[str],
    typer.Option(help="GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hub repo id, or a local folder "
                      "(with its own tokenizer, if it has one)."),
]
CheckpointOption = Annotated[Optional[Path], typer.Option(
    help="A checkpoint: nano-gpt's checkpoint_NNNNNN.bin or sharded checkpoint_NNNNNN folder (FSDP), or one of "
         "allenporter/nano-gpt, karpathy/nanoGPT (ckpt.pt) or karpathy/build-nanogpt (model_NNNNN.pt).")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str, typer.Option(help=f"Precision: {DTYPE_CHOICES}. auto: bf16 on GPUs that have it (else fp16), "
                                               "fp32 on MPS, and on CPUs whichever measures faster (logged).")]


def _check_choice(pretrained: str | None, checkpoint: Path | None, default: str | None) -> None:
    if pretrained is not None and checkpoint is not None:
        raise NanoGPTError("pass either --pretrained or --checkpoint, not both")
    if checkpoint is None and pretrained is None and default is None:
        raise NanoGPTError("pass --pretrained=NAME_OR_FOLDER or --checkpoint=FILE")


def load_model(pretrained: str | None, checkpoint: Path | None, default: str | None = "gpt2") -> GPT:
    """The model named by --pretrained or --checkpoint (at most one), else the `default` pretrained."""
    from nano_gpt.checkpoint import model_from_checkpoint
    from nano_gpt.pretrained import load_pretrained

    _check_choice(pretrained, checkpoint, default)
    if checkpoint is not None:
        return model_from_checkpoint(checkpoint)
    return load_pretrained(pretrained or default)


def load_model_and_tokenizer(pretrained: str | None, checkpoint: Path | None,
                             default: str | None = "gpt2") -> tuple[GPT, Tokenizer]:
    """`load_model`, and the tokenizer that goes with the model: a Hugging Face folder's own, if it has one
    that is not GPT-2's, else GPT-2's (every checkpoint format nano-gpt reads is trained on GPT-2 tokens)."""
    from nano_gpt.checkpoint import model_from_checkpoint
    from nano_gpt.pretrained import load_pretrained_with_tokenizer
    from nano_gpt.tokenizer import get_tokenizer

    _check_choice(pretrained, checkpoint, default)
    if checkpoint is not None:
        return model_from_checkpoint(checkpoint), get_tokenizer()
    return load_pretrained_with_tokenizer(pretrained or default)
