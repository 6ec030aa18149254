"""nano-gpt: train, evaluate, sample from and export GPT-2 models."""

from nano_gpt.config import PRESETS, GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.generate import generate
from nano_gpt.model import GPT
from nano_gpt.checkpoint import load_model as load_pretrained  # a Hub id, a Hugging Face folder or any checkpoint
from nano_gpt.tokenizer import get_tokenizer

__all__ = ["GPT", "GPTConfig", "PRESETS", "NanoGPTError", "generate", "get_tokenizer", "load_pretrained"]
