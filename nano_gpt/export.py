"""Export a GPT as a Hugging Face GPT-2 model folder that `transformers` and the Hub load as is.

The folder holds `model.safetensors` in OpenAI's GPT-2 layout (see `nano_gpt.hf`), a `GPT2Config`
`config.json`, `generation_config.json` and the GPT-2 tokenizer files. It is written to a temp folder
next to the target and renamed into place at the end, so a failed export leaves no half-written model.
"""

import logging
import secrets
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from nano_gpt.errors import NanoGPTError
from nano_gpt.hf import config_to_hf, state_dict_to_hf
from nano_gpt.model import GPT
from nano_gpt.tokenizer import VOCAB_SIZE, bpe_file

logger = logging.getLogger(__name__)


def _check_export_dir(export_dir: Path, force: bool = False) -> None:
    """Refuse a target that is a file, or a non-empty folder unless `force`."""
    export_dir = Path(export_dir)
    if export_dir.exists() and not export_dir.is_dir():
        raise NanoGPTError(f"--export-dir {export_dir} is a file; pass a folder")
    if export_dir.is_dir() and any(export_dir.iterdir()) and not force:
        raise NanoGPTError(f"{export_dir} is not empty; pass --force to replace it, or another --export-dir")


def _write_tokenizer(folder: Path, model_max_length: int) -> None:
    """vocab.json and merges.txt (OpenAI's encoder.json and vocab.bpe, hash-checked), plus the
    tokenizer.json and tokenizer_config.json that `AutoTokenizer` reads, written by transformers itself."""
    from transformers import GPT2TokenizerFast

    shutil.copyfile(bpe_file("encoder.json"), folder / "vocab.json")
    shutil.copyfile(bpe_file("vocab.bpe"), folder / "merges.txt")
    # Loading the folder (not the constructor, whose arguments changed) works under every transformers.
    tokenizer = GPT2TokenizerFast.from_pretrained(folder, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)


def _write_model(model: GPT, folder: Path, device: torch.device | str) -> None:
    from transformers import GenerationConfig, GPT2Config

    hf_config = GPT2Config(**config_to_hf(model.config, VOCAB_SIZE))
    hf_config.save_pretrained(folder)
    GenerationConfig.from_model_config(hf_config).save_pretrained(folder)
    sd = state_dict_to_hf({k: v.detach().to(device) for k, v in model.state_dict().items()}, VOCAB_SIZE)
    # fp32 on the CPU, as config.json says; the metadata tells transformers these are PyTorch tensors.
    save_file({k: v.to("cpu", torch.float32) for k, v in sd.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    # safetensors creates its file private (0600); give it the umask's mode, as config.json got.
    shutil.copymode(folder / "config.json", folder / "model.safetensors")


def _swap_into_place(tmp: Path, export_dir: Path) -> None:
    """Rename the finished folder to `export_dir`; an old one is moved aside first and deleted last."""
    if not export_dir.exists():
        tmp.rename(export_dir)
        return
    old = tmp.with_suffix(".old")  # tmp's name is random, so this one is free
    export_dir.rename(old)
    try:
        tmp.rename(export_dir)
    except OSError:
        old.rename(export_dir)
        raise
    shutil.rmtree(old)


def export_model(
    model: GPT, export_dir: Path | str, force: bool = False, device: torch.device | str = "cpu"
) -> Path:
    """Write `model` to `export_dir` as a complete Hugging Face GPT-2 folder; returns the folder.

    A vocabulary padded for training (50304) is cut back to GPT-2's 50257 tokens: the padding rows
    are never targets and no text encodes to them. `device` is where the conversion runs.
    """
    export_dir = Path(export_dir)
    _check_export_dir(export_dir, force)
    if model.config.vocab_size < VOCAB_SIZE:
        raise NanoGPTError(
            f"the model has a vocabulary of {model.config.vocab_size}, smaller than GPT-2's {VOCAB_SIZE}; "
            "only models using the GPT-2 tokenizer can be exported"
        )
    target = export_dir.resolve()  # so `.` and `out/` have a name to put the temp folder beside
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # unlike tempfile.mkdtemp (0700), this follows the umask, as the final folder should
        _write_model(model, tmp, device)
        _write_tokenizer(tmp, model.config.block_size)
        _swap_into_place(tmp, target)
    except OSError as e:
        reason = f"{e.strerror}: {e.filename}" if e.filename else str(e.strerror or e)
        raise NanoGPTError(f"cannot write to {export_dir} ({reason}); choose a writable --export-dir") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    logger.debug("exported %s", export_dir)
    return export_dir
