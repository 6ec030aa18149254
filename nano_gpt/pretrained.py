"""Load pretrained GPT-2 weights (and their tokenizer) from the Hugging Face Hub, a local folder, or a checkpoint file.

A folder is read the way `transformers` reads it: `config.json` through `GPT2Config`, then
`model.safetensors` or `pytorch_model.bin` (unpickled with `weights_only=True`), then the folder's own
tokenizer, if it has one that is not GPT-2's. A file is a checkpoint of nano-gpt or of a peer project
(see `nano_gpt.checkpoint.model_from_checkpoint`), so `train --pretrained=ckpt.pt` fine-tunes from it.
"""

import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nano_gpt.checkpoint import model_from_checkpoint
from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import parse_json
from nano_gpt.hf import config_from_hf, state_dict_from_hf
from nano_gpt.model import GPT
from nano_gpt.sharded_checkpoint import is_sharded
from nano_gpt.tokenizer import TOKENIZER_FILES, Tokenizer, get_tokenizer, load_tokenizer
from nano_gpt.weights import load_plain, model_from_weights

logger = logging.getLogger(__name__)

# OpenAI's checkpoints now live under the openai-community organisation.
HUB_ALIASES = {name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_reachable() -> bool:
    """Whether the Hub's host resolves: huggingface_hub retries connection errors with backoff
    (about 20 s), so an offline machine is told at once instead."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


def _fetch(repo_id: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config = hf_hub_download(repo_id, "config.json", local_files_only=local_only)
    for name in WEIGHT_FILES:
        try:
            hf_hub_download(repo_id, name, local_files_only=local_only)
            break
        except EntryNotFoundError:
            continue
    else:
        raise NanoGPTError(f"{repo_id!r} on the Hugging Face Hub has no model.safetensors or pytorch_model.bin")
    for name in TOKENIZER_FILES:  # optional: many GPT-2s on the Hub have a vocabulary of their own
        try:
            hf_hub_download(repo_id, name, local_files_only=local_only)
        except EntryNotFoundError:  # LocalEntryNotFoundError included: then the repo has no such file cached
            continue
    return Path(config).parent


def _download(repo_id: str) -> Path:
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return _fetch(repo_id, local_only=True)  # already in the huggingface_hub cache
    except (LocalEntryNotFoundError, NanoGPTError):
        pass
    try:
        if not hub_reachable():
            raise ConnectionError("no network")
        return _fetch(repo_id, local_only=False)
    except NanoGPTError:
        raise
    except Exception as e:  # offline, unknown repo, gated repo, HTTP errors: all mean "cannot fetch"
        raise NanoGPTError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}); check the name and "
            "your connection, or pass a local folder holding config.json and model.safetensors: --pretrained=./my-gpt2"
        ) from e


def resolve_pretrained(name_or_path: str) -> Path:
    """A local folder or checkpoint file as is; a preset name or Hub repo id is downloaded (and cached by
    huggingface_hub)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.name in ("config.json", *WEIGHT_FILES) and path.is_file():
        raise NanoGPTError(f"{name_or_path} is one file of a Hugging Face model folder; pass the folder: "
                           f"--pretrained={path.parent}")
    if path.exists():
        return path  # a checkpoint file
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise NanoGPTError(f"{name_or_path} not found; pass a folder holding config.json and model.safetensors, "
                           "or a checkpoint file")
    repo_id = HUB_ALIASES.get(name_or_path, name_or_path)
    logger.info("fetching %s from the Hugging Face Hub", repo_id)
    return _download(repo_id)


def _read_config(folder: Path) -> GPTConfig:
    file = folder / "config.json"
    try:
        raw = file.read_bytes()
    except FileNotFoundError as e:
        raise NanoGPTError(f"no config.json in {folder}; is it a Hugging Face GPT-2 model folder?") from e
    except OSError as e:
        raise NanoGPTError(f"cannot read {file} ({e.strerror})") from e
    hf = parse_json(raw, str(file), "a config.json is a JSON object of GPT-2 config fields")
    if not isinstance(hf, dict):
        raise NanoGPTError(f"{file} is a JSON {type(hf).__name__}, not an object of GPT-2 config fields")
    return config_from_hf(hf, source=str(file))


def _read_weights(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.exists():
            continue
        if name.endswith(".bin"):
            return file, load_plain(file, "a weights file")  # weights only: never run pickled code
        try:
            return file, load_file(file)
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise NanoGPTError(f"cannot read {file} ({e.__class__.__name__}): the file is corrupt or not a weights "
                               "file") from e
    raise NanoGPTError(f"no model.safetensors or pytorch_model.bin in {folder}")


def _load_folder(folder: Path) -> GPT:
    config = _read_config(folder)  # every size checked before the weights are read
    file, hf_sd = _read_weights(folder)
    if not isinstance(hf_sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in hf_sd.items()):
        raise NanoGPTError(f"{file} does not hold a dict of named tensors; is it a model's weights?")
    model = model_from_weights(config, state_dict_from_hf(hf_sd), f"{file} (with {folder / 'config.json'})")
    logger.debug("loaded %s: %s", folder, config)
    return model.float().eval()


def _load(source: Path) -> GPT:
    return _load_folder(source) if source.is_dir() and not is_sharded(source) else model_from_checkpoint(source)


def load_pretrained(name_or_path: str) -> GPT:
    """A GPT with pretrained weights, on the CPU in fp32: a Hub name or id, a Hugging Face folder, or a
    checkpoint file (nano-gpt's or a peer project's)."""
    return _load(resolve_pretrained(name_or_path))


def load_pretrained_with_tokenizer(name_or_path: str) -> tuple[GPT, Tokenizer]:
    """`load_pretrained`, plus the tokenizer that goes with it: the folder's own when it has one that is
    not GPT-2's, else GPT-2's (checkpoints are all trained on GPT-2 tokens)."""
    source = resolve_pretrained(name_or_path)
    model = _load(source)
    return model, load_tokenizer(source) if source.is_dir() else get_tokenizer()
