"""nano-gpt: train, evaluate, sample from and export GPT-2 models.

The names that need torch are imported on first use, so that `nano-gpt --help`, which imports this package,
answers without loading torch.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from nano_gpt.config import PRESETS, GPTConfig
from nano_gpt.errors import NanoGPTError

__all__ = ["GPT", "GPTConfig", "PRESETS", "NanoGPTError", "for_inference", "generate", "get_tokenizer", "load_pretrained"]

# name -> (module, attribute): `load_pretrained` is the one reader's `load_model`.
_LAZY = {"GPT": ("nano_gpt.model", "GPT"), "generate": ("nano_gpt.generate", "generate"),
         "for_inference": ("nano_gpt.generate", "for_inference"),
         "get_tokenizer": ("nano_gpt.tokenizer", "get_tokenizer"),
         "load_pretrained": ("nano_gpt.checkpoint", "load_model")}

if TYPE_CHECKING:
    from nano_gpt.generate import for_inference, generate
    from nano_gpt.model import GPT
    from nano_gpt.checkpoint import load_model as load_pretrained
    from nano_gpt.tokenizer import get_tokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule nano_gpt.generate binds it as this package's `generate`; the package's
        # `generate` is the function, as it was before it was loaded lazily.
        if name == "generate" and isinstance(value, types.ModuleType):
            value = value.generate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
