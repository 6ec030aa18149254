"""Options and model loading shared by several subcommands.

Nothing here imports torch at module level: the options are built for --help, the loaders import where they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from nano_gpt.defaults import DTYPE_CHOICES, Quantize
from nano_gpt.errors import NanoGPTError

if TYPE_CHECKING:
    from nano_gpt.checkpoint import Checkpoint

PretrainedOption = Annotated[
    Optional[str],
    typer.Option(help="GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hub repo id, or a local folder "
                      "(with its own tokenizer, if it has one)."),
]
CheckpointOption = Annotated[Optional[Path], typer.Option(
    help="A checkpoint: nano-gpt's checkpoint_NNNNNN.bin or sharded checkpoint_NNNNNN folder (FSDP), or one of "
         "allenporter/nano-gpt, karpathy/nanoGPT (ckpt.pt) or karpathy/build-nanogpt (model_NNNNN.pt).")]
MetaOption = Annotated[Optional[Path], typer.Option(
    help="With a karpathy/nanoGPT character-level ckpt.pt: its meta.pkl (the vocabulary). Default: meta.pkl beside "
         "the checkpoint, else data/<its dataset>/meta.pkl as nanoGPT's sample.py finds it.")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[str, typer.Option(help=f"Precision: {DTYPE_CHOICES}. auto: bf16 on GPUs that have it (else fp16), "
                                               "fp32 on MPS, and on CPUs whichever measures faster (logged).")]

QuantizeOption = Annotated[Quantize, typer.Option(help=(
    "int8: weights stored as int8 with one scale per output channel and dequantised in the matmul (activations "
    "keep --dtype); half of bf16's bytes for each token to stream, for a small loss change (docs/benchmarks.md)."))]


def read_model(pretrained: str | None, checkpoint: Path | None, default: str | None = "gpt2",
               meta: Path | None = None) -> Checkpoint:
    """The model file named by --pretrained (which may be a Hub id) or --checkpoint (a local file or folder), at
    most one, else the `default` pretrained; read by the one reader, `nano_gpt.checkpoint.read_checkpoint`
    (`meta`: a nanoGPT character-level checkpoint's meta.pkl)."""
    if pretrained is not None and checkpoint is not None:
        raise NanoGPTError("pass either --pretrained or --checkpoint, not both")
    if meta is not None and checkpoint is None:
        raise NanoGPTError("--meta goes with --checkpoint=ckpt.pt (a karpathy/nanoGPT character-level checkpoint)")
    if pretrained is None and checkpoint is None and default is None:
        raise NanoGPTError("pass --pretrained=NAME_OR_FOLDER or --checkpoint=FILE")
    from nano_gpt.checkpoint import read_checkpoint  # torch: only once a command runs

    if checkpoint is not None:
        return read_checkpoint(checkpoint, hub=False, meta=meta)
    return read_checkpoint(pretrained or default)
