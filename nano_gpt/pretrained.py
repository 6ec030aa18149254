"""Load pretrained GPT-2 weights from the Hugging Face Hub or a local folder."""

import json
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nano_gpt.errors import NanoGPTError
from nano_gpt.hf import config_from_hf, state_dict_from_hf
from nano_gpt.model import GPT

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
            return Path(config).parent
        except EntryNotFoundError:
            continue
    raise NanoGPTError(f"{repo_id!r} on the Hugging Face Hub has no model.safetensors or pytorch_model.bin")


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
    """A local folder as is; a preset name or Hub repo id is downloaded (cached by huggingface_hub)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NanoGPTError(f"--pretrained={name_or_path} is a file; pass the folder holding config.json and the weights")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise NanoGPTError(f"folder {name_or_path} not found; pass a folder holding config.json and model.safetensors")
    repo_id = HUB_ALIASES.get(name_or_path, name_or_path)
    logger.info("fetching %s from the Hugging Face Hub", repo_id)
    return _download(repo_id)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = folder / name
        if not file.exists():
            continue
        try:
            if name.endswith(".safetensors"):
                return load_file(file)
            return torch.load(file, map_location="cpu", weights_only=True)  # weights only: never run pickled code
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise NanoGPTError(f"cannot read {file} ({e.__class__.__name__}): the file is corrupt or not a weights file") from e
    raise NanoGPTError(f"no model.safetensors or pytorch_model.bin in {folder}")


def load_pretrained(name_or_path: str) -> GPT:
    """A GPT with GPT-2 weights, on the CPU in fp32."""
    folder = resolve_pretrained(name_or_path)
    config_file = folder / "config.json"
    try:
        hf_config = json.loads(config_file.read_text())
        config = config_from_hf(hf_config)
    except FileNotFoundError as e:
        raise NanoGPTError(f"no config.json in {folder}; is it a Hugging Face GPT-2 model folder?") from e
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise NanoGPTError(f"{config_file} is not a valid GPT-2 config ({e.__class__.__name__}: {e})") from e
    sd = state_dict_from_hf(_read_weights(folder))
    model = GPT(config)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise NanoGPTError(f"weights in {folder} do not match its config.json: {first_line}") from e
    logger.debug("loaded %s: %s", folder, config)
    return model.float().eval()
