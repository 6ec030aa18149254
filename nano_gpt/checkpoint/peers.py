"""Checkpoints of the projects nano-gpt grew from, read as plain data so a user's old runs carry over.

- the seed, allenporter/nano-gpt: a dict with `model_state_dict`, `config` (its GPTConfig as a dict),
  `step`, `val_loss_accum`, `optimizer_state_dict` and the run's configs as dicts;
- karpathy/nanoGPT's `ckpt.pt`: `model`, `model_args` (n_layer, n_head, n_embd, block_size, bias,
  vocab_size, dropout), `optimizer`, `iter_num`, `best_val_loss`, `config`;
- karpathy/build-nanogpt's `model_NNNNN.pt`: `model`, `config` (a pickled `GPTConfig` dataclass of
  that script's `__main__`), `step`, `val_loss`.

All three use GPT-2's key names, as nano-gpt does, and may add `_orig_mod.` (saved under
torch.compile) and the causal-mask buffer `attn.bias` that older attention code registered. Every
file is read with `torch.load(weights_only=True)`; build-nanogpt's class is mapped to a stand-in that
only keeps the field values, so nothing in a file can run code.
"""

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from nano_gpt.checkpoint.torchfile import read_torch_file
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.weights import config_from_fields, expected_shapes, model_from_weights

logger = logging.getLogger(__name__)

SEED = "allenporter/nano-gpt"
NANOGPT = "karpathy/nanoGPT"
BUILD_NANOGPT = "karpathy/build-nanogpt"
UNDERSTOOD = ("nano-gpt's checkpoint_NNNNNN.bin, allenporter/nano-gpt's checkpoint_NNNNNN.bin, karpathy/nanoGPT's "
              "ckpt.pt and karpathy/build-nanogpt's model_NNNNN.pt")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DDP's wrappers
_MASK_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights


class PickledGPTConfig:
    """Stands in for build-nanogpt's `__main__.GPTConfig` while unpickling: it keeps the field values
    and nothing else (the real class, or any code, is never looked up)."""

    def __setstate__(self, state: object) -> None:
        self.fields = dict(state) if isinstance(state, dict) else {}


def read_checkpoint_file(path: Path, mmap: bool = False) -> Any:
    """Whatever a checkpoint file holds, unpickled without running code; a bad file is one NanoGPTError line."""
    path = Path(path)
    if path.is_dir():
        raise NanoGPTError(f"{path} is a folder; pass a checkpoint file, or a Hugging Face model folder with "
                           f"--pretrained={path}")
    if not path.is_file():
        found = "is not a regular file (a device, a pipe or a socket)" if path.exists() else "not found"
        raise NanoGPTError(f"checkpoint {path} {found}; pass a checkpoint file ({UNDERSTOOD})")
    return read_torch_file(path, f"a checkpoint ({UNDERSTOOD})", [(PickledGPTConfig, "__main__.GPTConfig")], mmap)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: any class or function a file names is refused, so a
    meta.pkl cannot run code (dicts of ints and strings need no class lookup at all)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def nanogpt_meta_path(path: Path, state: dict[str, Any], meta: Path | None) -> Path | None:
    """Where a nanoGPT checkpoint's meta.pkl is: `meta`, else beside the checkpoint, else where nanoGPT's
    sample.py looks (data/<the run's dataset>/meta.pkl, from the working directory); None if nowhere."""
    if meta is not None:
        return meta
    config = state.get("config")
    dataset = config.get("dataset") if isinstance(config, dict) else None
    candidates = [path.parent / "meta.pkl"]
    if isinstance(dataset, str) and dataset and Path(dataset).name == dataset:
        candidates.append(Path("data") / dataset / "meta.pkl")
    return next((p for p in candidates if p.is_file()), None)


def read_nanogpt_meta(path: Path) -> dict[str, Any]:
    """The character vocabulary of nanoGPT's meta.pkl (`{"vocab_size", "itos", "stoi"}`) as a tokenizer record;
    read without running code, every entry checked. A file that is not one is one NanoGPTError line."""
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except OSError as e:
        raise NanoGPTError(f"cannot read {path} ({e.strerror or e})") from e
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises many types
        raise NanoGPTError(f"{path} is not nanoGPT's meta.pkl of plain data ({e})") from e
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))) or not all(
            isinstance(c, str) and len(c) == 1 for c in itos.values()) or len(set(itos.values())) != len(itos):
        raise NanoGPTError(f"{path} is not a character-level meta.pkl: its itos is not one character per id 0..N-1")
    chars = "".join(itos[i] for i in range(len(itos)))
    return {"kind": "char", "n_vocab": len(chars), "eot_token": None, "chars": chars}


def peer_format(state: Any) -> str | None:
    """Which peer project wrote this loaded checkpoint, if one did."""
    if not isinstance(state, dict):
        return None
    if "model_state_dict" in state and isinstance(state.get("config"), dict):
        return SEED
    if "model" in state and isinstance(state.get("model_args"), dict):  # nanoGPT's `config` is its run's settings
        return NANOGPT
    if "model" in state and isinstance(state.get("config"), PickledGPTConfig):
        return BUILD_NANOGPT
    return None


def _plain_keys(sd: Any, source: str) -> dict[str, torch.Tensor]:
    """Keys without compile/DDP prefixes, and without the causal-mask buffers."""
    if not isinstance(sd, dict):
        raise NanoGPTError(f"{source}: the model entry is not a state dict")
    plain = {}
    for key, tensor in sd.items():
        if not isinstance(key, str):
            raise NanoGPTError(f"{source}: state-dict key {key!r} is not a string")
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        if not key.endswith(_MASK_SUFFIXES):
            plain[key] = tensor
    return plain


def peer_model(state: Any, path: Path) -> GPT:
    """The GPT in a loaded peer checkpoint (fp32, training mode); anything else is one line listing the formats."""
    fmt = peer_format(state)
    if fmt is None:
        raise NanoGPTError(f"{path} is not a checkpoint nano-gpt understands; it reads {UNDERSTOOD} "
                           "(and Hugging Face model folders with --pretrained=FOLDER)")
    source = f"{path} ({fmt} checkpoint)"
    if fmt == SEED:
        fields, sd = state["config"], state["model_state_dict"]
    elif fmt == NANOGPT:
        fields, sd = state["model_args"], state["model"]
    else:
        fields, sd = state["config"].fields, state["model"]
    config = config_from_fields(fields, source)
    sd = _plain_keys(sd, source)
    if fmt == NANOGPT:
        if fields.get("bias") is False:  # no biases in Linear and LayerNorm: GPT-2 with zero biases
            for key, shape in expected_shapes(config).items():
                if key.endswith(".bias") and key not in sd:
                    sd[key] = torch.zeros(shape)
        logger.info("%s: nanoGPT's MLP uses the exact GELU; nano-gpt computes GPT-2's tanh approximation (a "
                    "difference below 0.0005 per activation)", path)
    logger.debug("read %s: %s", source, config)
    return model_from_weights(config, sd, source)
