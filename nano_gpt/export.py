"""Export a GPT as a Hugging Face GPT-2 model folder that `transformers` and the Hub load as is.

The folder holds `model.safetensors` in OpenAI's GPT-2 layout (see `nano_gpt.hf`), a `GPT2Config`
`config.json`, `generation_config.json`, the model's tokenizer files (GPT-2's; or a character vocabulary as a
`tokenizers` BPE with no merges, so `AutoTokenizer` maps each character to its id; or a tokenizer's own
tokenizer.json) and a model card (`README.md`,
with `training_log.png` when the run's log is known). It is written to a recorded temp folder next to the
target and renamed into place at the end (`files.replace_folder`), so a failed export leaves no half-written
model; an export killed mid-way leaves the temp folder, which the next export beside it removes.
`force` replaces only a folder that holds nothing but a previous export, never the working
directory, one of its ancestors, the home folder or the filesystem root.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from nano_gpt.errors import NanoGPTError
from nano_gpt.files import discard_temp, os_error_behind, os_error_message, remove_stale_temps, replace_folder, temp_path
from nano_gpt.hf import config_to_hf, state_dict_to_hf
from nano_gpt.model import GPT
from nano_gpt.model_card import (
    DEFAULT_LICENSE,
    PLOT_FILE,
    CardFacts,
    facts_from_model,
    render_model_card,
    training_plot,
)
from nano_gpt.tokenizer import CharTokenizer, Tokenizer, bpe_file, get_tokenizer, is_gpt2, tokenizer_record
from nano_gpt.version import nano_gpt_version

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# Every file an export writes (tokenizer files vary with the transformers release): a folder holding
# only these is a previous export, which --force may replace.
EXPORT_FILES = frozenset({
    "model.safetensors", "config.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "README.md", PLOT_FILE,
})


def _is_previous_export(folder: Path) -> bool:
    return all(p.name in EXPORT_FILES and not p.is_dir() for p in folder.iterdir())


def prepare_export_dir(export_dir: Path | str, force: bool = False) -> Path:
    """The folder to export to, once killed exports' leftovers beside it are cleaned up; refuses an empty
    name, a path through a file, and any target whose replacement could destroy anything but a previous
    export. Cheap, so a CLI calls it before loading a model."""
    if str(export_dir) == "":
        raise NanoGPTError("--export-dir is empty; name a folder such as --export-dir=export")
    export_dir = Path(export_dir).expanduser()
    target = export_dir.resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if target == cwd or cwd.is_relative_to(target):
        what = "the working directory" if target == cwd else "a folder that holds the working directory"
        raise NanoGPTError(f"--export-dir {export_dir} is {what}; name a new folder such as --export-dir=export")
    if target == home or target.parent == target:
        what = "your home folder" if target == home else "the filesystem root"
        raise NanoGPTError(f"--export-dir {export_dir} is {what}; name a new folder such as --export-dir=export")
    if export_dir.exists() and not export_dir.is_dir():
        raise NanoGPTError(f"--export-dir {export_dir} is a file; pass a folder")
    blocking = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise NanoGPTError(f"cannot write to {export_dir}: {blocking} is a file, not a folder; choose another "
                           "--export-dir")
    for path in remove_stale_temps(target.parent):  # what killed exports (or other writes of ours) left
        logger.info("removed %s, left by a killed export", path)
    if not export_dir.is_dir():
        return export_dir
    try:
        entries = sorted(p.name for p in export_dir.iterdir())
        previous_export = _is_previous_export(export_dir)
    except OSError as e:
        raise NanoGPTError(f"cannot read --export-dir {export_dir} ({e.strerror}); choose another folder") from e
    if not entries:
        return export_dir
    if not previous_export:
        others = [name for name in entries if name not in EXPORT_FILES or (export_dir / name).is_dir()]
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise NanoGPTError(f"{export_dir} is not empty and holds files no export writes ({shown}); choose another "
                           "--export-dir (--force replaces only a previous export)")
    if not force:
        raise NanoGPTError(f"{export_dir} holds a previous export; pass --force to replace it, or another --export-dir")
    return export_dir


def _write_tokenizer(folder: Path, model_max_length: int, tokenizer: Tokenizer) -> None:
    """GPT-2's: vocab.json and merges.txt (OpenAI's encoder.json and vocab.bpe, hash-checked), plus the
    tokenizer.json and tokenizer_config.json that `AutoTokenizer` reads, written by transformers itself. Any
    other: its tokenizer.json (a character vocabulary as a BPE without merges: a text splits into characters,
    each of which is a token) saved by transformers' `PreTrainedTokenizerFast`."""
    from transformers import GPT2TokenizerFast, PreTrainedTokenizerFast

    if not is_gpt2(tokenizer):
        from tokenizers import Tokenizer as RustTokenizer
        from tokenizers import decoders, models

        if isinstance(tokenizer, CharTokenizer):
            rust = RustTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tokenizer.chars)}, merges=[]))
            rust.decoder = decoders.Fuse()  # characters join as they are, with no spaces between them
        else:
            rust = RustTokenizer.from_str(tokenizer.to_json())
        eos = {} if tokenizer.eot_token is None else {"eos_token": rust.id_to_token(tokenizer.eot_token)}
        fast = PreTrainedTokenizerFast(tokenizer_object=rust, model_max_length=model_max_length,
                                       clean_up_tokenization_spaces=False, **eos)
        fast.save_pretrained(folder)
        return

    shutil.copyfile(bpe_file("encoder.json"), folder / "vocab.json")
    shutil.copyfile(bpe_file("vocab.bpe"), folder / "merges.txt")
    # Loading the folder (not the constructor, whose arguments changed) works under every transformers.
    tokenizer = GPT2TokenizerFast.from_pretrained(folder, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)


def safetensors_metadata() -> dict[str, str]:
    """`format: pt` tells transformers these are PyTorch tensors; the producer says what wrote them."""
    version = nano_gpt_version()
    return {"format": "pt", "producer": "nano-gpt", **({"producer_version": version} if version else {})}


def _write_model(model: GPT, folder: Path, device: torch.device | str, tokenizer: Tokenizer) -> None:
    from transformers import GenerationConfig, GPT2Config

    hf_config = GPT2Config(**config_to_hf(model.config, tokenizer.n_vocab, tokenizer.eot_token))
    hf_config.save_pretrained(folder)
    GenerationConfig.from_model_config(hf_config).save_pretrained(folder)
    sd = state_dict_to_hf({k: v.detach().to(device) for k, v in model.state_dict().items()}, tokenizer.n_vocab)
    # fp32 on the CPU, as config.json says.
    save_file({k: v.to("cpu", torch.float32) for k, v in sd.items()}, folder / "model.safetensors",
              metadata=safetensors_metadata())
    # safetensors creates its file private (0600); give it the umask's mode, as config.json got.
    shutil.copymode(folder / "config.json", folder / "model.safetensors")


def _write_card(folder: Path, card: str, plot: Figure | None) -> None:
    (folder / "README.md").write_text(card, encoding="utf-8")
    if plot is not None:
        plot.savefig(folder / PLOT_FILE)


def _os_error_message(export_dir: Path, e: OSError, needed: int) -> str:
    """The one-line OS error (a full disk names the space needed), pointing at --export-dir, not the temp folder."""
    message = os_error_message(e, export_dir, needed).replace(f"cannot write {export_dir}", f"cannot write to {export_dir}", 1)
    return f"{message}; a previous export in --export-dir is left as it was"


def export_model(
    model: GPT,
    export_dir: Path | str,
    force: bool = False,
    device: torch.device | str = "cpu",
    *,
    facts: CardFacts | None = None,
    model_card: str | None = None,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write `model` to `export_dir` as a complete Hugging Face GPT-2 folder with a model card; returns the folder.

    A vocabulary padded for training (50304) is cut back to the tokenizer's size (GPT-2's 50257 by default;
    `tokenizer` is the model's, as `Checkpoint.tokenizer()` gives it): the padding rows are never targets and
    no text encodes to them. `device` is where the conversion runs.
    The card is rendered from `facts` (default: what the model itself tells), its snippets load
    `repo_id` when given (the folder is going to the Hub); `model_card` replaces it with a
    user's own text. A training-log plot goes in when `facts` carry the run's log.
    """
    export_dir = prepare_export_dir(export_dir, force)
    tokenizer = tokenizer or get_tokenizer()
    if model.config.vocab_size < tokenizer.n_vocab:
        raise NanoGPTError(
            f"the model has a vocabulary of {model.config.vocab_size}, smaller than its tokenizer's {tokenizer.n_vocab}; "
            "export it with the tokenizer it was trained with"
        )
    target = export_dir.resolve()  # so `out/` and `a/../b` have a name to put the temp folder beside
    facts = facts or facts_from_model(model, tokenizer=tokenizer_record(tokenizer))
    name = repo_id.split("/")[-1] if repo_id else target.name
    plot = training_plot(facts, title=repo_id or target.name)
    card = model_card if model_card is not None else render_model_card(
        facts, name=name, repo_id=repo_id, license=license, plot_file=PLOT_FILE if plot is not None else None)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target)
        tmp.mkdir()  # unlike tempfile.mkdtemp (0700), this follows the umask, as the final folder should
        _write_model(model, tmp, device, tokenizer)
        _write_tokenizer(tmp, model.config.block_size, tokenizer)
        _write_card(tmp, card, plot)
        replace_folder(tmp, target, replace=force)
    except Exception as e:  # an OSError, or a writer's own error raised while handling one (a full disk)
        if isinstance(e, FileExistsError):  # another export finished first
            raise NanoGPTError(f"{export_dir} was written by another export meanwhile; pass --force to replace it, "
                               "or another --export-dir") from None
        if (os_error := os_error_behind(e)) is None:
            raise
        needed = sum(p.numel() for p in model.parameters()) * 4  # the fp32 weights dominate the folder
        raise NanoGPTError(_os_error_message(export_dir, os_error, needed)) from e
    finally:
        if tmp is not None:
            discard_temp(tmp)  # gone already once renamed into place
    logger.debug("exported %s", export_dir)
    return export_dir
