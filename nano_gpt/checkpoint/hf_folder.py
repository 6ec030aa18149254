"""A Hugging Face GPT-2 folder (`save_pretrained`'s, an export's, or a Hub repo's download), read as
`transformers` reads it: `config.json` through `GPT2Config`, then `model.safetensors` or `pytorch_model.bin`
(unpickled with `weights_only=True`). The folder's own tokenizer, if it has one, is `nano_gpt.tokenizer`'s."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nano_gpt.checkpoint.torchfile import read_torch_file
from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import parse_json
from nano_gpt.hf import config_from_hf, state_dict_from_hf
from nano_gpt.hub import WEIGHT_FILES
from nano_gpt.model import GPT
from nano_gpt.weights import model_from_weights

logger = logging.getLogger(__name__)


def read_folder_config(folder: Path) -> GPTConfig:
    """The model's shape from `config.json`, every size checked (the weights are not read)."""
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for name in WEIGHT_FILES:
        file = folder / name
        if not file.exists():
            continue
        if name.endswith(".bin"):
            return file, read_torch_file(file, "a weights file")  # weights only: never run pickled code
        try:
            return file, load_file(file)
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
            raise NanoGPTError(f"cannot read {file} ({e.__class__.__name__}): the file is corrupt or not a weights "
                               "file") from e
    raise NanoGPTError(f"no model.safetensors or pytorch_model.bin in {folder}")


def read_folder(folder: Path) -> GPT:
    """The GPT a Hugging Face folder holds (fp32, training mode, as `GPT(config)` is)."""
    config = read_folder_config(folder)  # every size checked before the weights are read
    file, hf_sd = _read_weights(folder)
    if not isinstance(hf_sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in hf_sd.items()):
        raise NanoGPTError(f"{file} does not hold a dict of named tensors; is it a model's weights?")
    model = model_from_weights(config, state_dict_from_hf(hf_sd), f"{file} (with {folder / 'config.json'})")
    logger.debug("loaded %s: %s", folder, config)
    return model
