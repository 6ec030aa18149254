"""The names and defaults that command-line options show, in a module that imports nothing heavy.

`nano-gpt --help`, `nano-gpt COMMAND --help` and a mistyped flag are answered from these alone, before
torch, numpy or datasets are imported; the modules that act on the values import them from here.
"""

from enum import Enum
from pathlib import Path

# --dtype values and the torch dtype each names (`nano_gpt.runtime.DTYPES`); the long names are the torch
# spellings that earlier releases took.
DTYPE_NAMES: dict[str, str | None] = {
    "auto": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
    "float32": "float32", "bfloat16": "bfloat16", "float16": "float16",
}
DTYPE_CHOICES = "auto, fp32, bf16 or fp16"


class Quantize(str, Enum):
    """--quantize: `int8` stores weights as int8 with one scale per output channel (`nano_gpt.quantize`)."""

    none = "none"
    int8 = "int8"


class ExportFormat(str, Enum):
    """--format of `nano-gpt export`: a Hugging Face model folder, or one GGUF file for llama.cpp."""

    hf = "hf"
    gguf = "gguf"


class GgufType(str, Enum):
    """--gguf-type: the GGML type of a GGUF export's matrices (`nano_gpt.gguf_export`)."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"


PARALLELISMS = ("auto", "ddp", "fsdp")  # --parallelism (see `nano_gpt.parallel`)
FSDP_FP16 = ("--parallelism=fsdp trains in bf16 or fp32; fp16 would need a loss scaler that agrees across shards. "
             "Use --dtype=bf16, or --dtype=fp32 on GPUs without bf16, or DDP")
DEFAULT_DATASET_DIR = Path("dataset_cache")  # where prepared shards live (see `nano_gpt.data.shards`)
DEFAULT_TOKENS_PER_SHARD = 100_000_000  # 200 MB of uint16: FineWeb-Edu's 10B tokens make about 100 shards
DEFAULT_LICENSE = "mit"  # of an exported model: GPT-2's own license, and nano-gpt's
