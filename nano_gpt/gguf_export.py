"""Export a GPT as one GGUF file that llama.cpp (and what builds on it: llama-cpp-python, Ollama, LM Studio) loads
with its built-in `gpt2` architecture.

The file is written through the `gguf` package that llama.cpp publishes, with its names for everything: the
architecture's tensor names (`token_embd`, `blk.N.attn_qkv`, ...) and metadata keys (`gpt2.context_length`, ...),
as llama.cpp's own `convert_hf_to_gguf.py` writes them for a Hugging Face GPT-2. Our `nn.Linear` weights are
already (out, in), the layout llama.cpp multiplies by, so no transposes are needed. The vocabulary is cut to
GPT-2's 50,257 tokens (training pads it to 50,304; llama.cpp wants one embedding row per token), and the
tokenizer (GPT-2's byte-level BPE: tokens, types and merges) goes in the file, so it stands alone.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nano_gpt.files import atomic_write
from nano_gpt.defaults import GgufType
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.tokenizer import EOT_TEXT, EOT_TOKEN, VOCAB_SIZE, gpt2_vocab_and_merges

if TYPE_CHECKING:
    import gguf

logger = logging.getLogger(__name__)

GGUF_TYPES = tuple(t.value for t in GgufType)
GGUF_MAGIC = b"GGUF"  # the first bytes of every GGUF file

# Our parameter name (after "transformer.h.N." for a block) -> llama.cpp's tensor for GPT-2 (gguf.MODEL_TENSOR).
_GLOBAL = {"transformer.wte": "TOKEN_EMBD", "transformer.wpe": "POS_EMBD", "transformer.ln_f": "OUTPUT_NORM",
           "lm_head": "OUTPUT"}
_BLOCK = {"ln_1": "ATTN_NORM", "attn.c_attn": "ATTN_QKV", "attn.c_proj": "ATTN_OUT", "ln_2": "FFN_NORM",
          "mlp.c_fc": "FFN_UP", "mlp.c_proj": "FFN_DOWN"}


def _import_gguf() -> gguf:
    try:
        import gguf
    except ImportError:
        raise NanoGPTError("GGUF export needs the gguf package: pip install 'nano-gpt[gguf]'") from None
    return gguf


def gguf_tensor_name(key: str) -> str:
    """llama.cpp's name for one of our parameters: transformer.h.3.attn.c_attn.weight -> blk.3.attn_qkv.weight."""
    gguf = _import_gguf()
    module, _, kind = key.rpartition(".")  # kind: weight or bias
    if module in _GLOBAL:
        return f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[_GLOBAL[module]]]}.{kind}"
    _, _, index, block_module = module.split(".", 3)  # transformer, h, N, attn.c_attn
    return f"{gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[_BLOCK[block_module]]].format(bid=int(index))}.{kind}"


def _encode(gguf: gguf, name: str, values: np.ndarray, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The bytes to store for one tensor and their GGML type.

    Vectors (LayerNorm weights, biases) stay f32, as llama.cpp's converter keeps them: they are tiny and llama.cpp
    adds and multiplies them in f32. With q8_0 (blocks of 32 values along a row) the position embedding stays f32
    too, as the converter keeps it, and a matrix whose rows do not split into blocks of 32 falls back to f16.
    """
    Q = gguf.GGMLQuantizationType
    qtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[gguf_type]
    if values.ndim == 1 or (qtype == Q.Q8_0 and name.startswith("position_embd")):
        qtype = Q.F32
    elif qtype == Q.Q8_0 and values.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        qtype = Q.F16
    return gguf.quants.quantize(values, qtype), qtype


def _add_tokenizer(writer: gguf.GGUFWriter, gguf: gguf) -> None:
    vocab, merges = gpt2_vocab_and_merges()
    tokens = sorted(vocab, key=vocab.__getitem__)  # in id order: a token's id is its index in the list
    types = [gguf.TokenType.CONTROL if t == EOT_TEXT else gguf.TokenType.NORMAL for t in tokens]
    writer.add_tokenizer_model("gpt2")  # byte-level BPE
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's pre-tokenizer regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(EOT_TOKEN)  # GPT-2 has one token for both ends
    writer.add_eos_token_id(EOT_TOKEN)


def check_output(output: Path, force: bool) -> None:
    """Refuse, before any model is read, an `--output` that is a folder, exists without `force`, or is anything
    but a previous GGUF file (`force` replaces only that: never a user's file, a device or a pipe)."""
    if str(output) in ("", "."):
        raise NanoGPTError("--format=gguf needs --output=FILE, such as --output=model.gguf")
    if output.is_dir():
        raise NanoGPTError(f"--output {output} is a folder; name a file such as {output / 'model.gguf'}")
    if not output.exists():
        return
    if not force:
        raise NanoGPTError(f"{output} exists; pass --force to replace it, or another --output")
    if not output.is_file():
        raise NanoGPTError(f"--output {output} is not a regular file (a device, a pipe or a socket); name a file such "
                           "as --output=model.gguf")
    try:
        with open(output, "rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise NanoGPTError(f"cannot read --output {output} ({e.strerror}); choose another --output") from e
    if magic != GGUF_MAGIC:
        raise NanoGPTError(f"{output} is not a GGUF file; --force replaces only a previous GGUF export: choose "
                           "another --output")


def export_gguf(model: GPT, path: Path | str, gguf_type: str = "f16", name: str = "nano-gpt") -> Path:
    """Write `model` as a GGUF file for llama.cpp's `gpt2` architecture at `path` (atomically: a kill leaves the
    old file or the new one); `gguf_type` is f32, f16, bf16 or q8_0. Returns the path."""
    gguf = _import_gguf()
    if gguf_type not in GGUF_TYPES:
        raise NanoGPTError(f"--gguf-type={gguf_type}: choose one of {', '.join(GGUF_TYPES)}")
    c = model.config
    if c.vocab_size < VOCAB_SIZE:
        raise NanoGPTError(f"the model has a vocabulary of {c.vocab_size}, smaller than GPT-2's {VOCAB_SIZE}; only "
                           "models using the GPT-2 tokenizer can be exported")
    path = Path(path)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type]
    writer = gguf.GGUFWriter(None, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
    writer.add_name(name)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(4 * c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_head_count(c.n_head)
    writer.add_layer_norm_eps(c.layer_norm_epsilon)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, gguf)
    # The LM head is written although it is tied to the embedding, as llama.cpp's converter does for GPT-2.
    for key, tensor in model.state_dict().items():
        values = tensor.detach().to("cpu", torch.float32)
        if key in ("transformer.wte.weight", "lm_head.weight"):
            values = values[:VOCAB_SIZE]  # the rows past GPT-2's tokens are padding no text encodes to
        tensor_name = gguf_tensor_name(key)
        data, qtype = _encode(gguf, tensor_name, values.numpy(), gguf_type)
        writer.add_tensor(tensor_name, data, raw_dtype=qtype)

    def write(f: object) -> None:
        # GGUFWriter opens the file it is given by name: it writes the temp file `atomic_write` holds open,
        # whose fsync then makes these bytes durable before the rename.
        writer.write_header_to_file(Path(f.name))  # type: ignore[attr-defined]
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(path, write)  # a full disk or a read-only folder is one NanoGPTError naming `path`
    logger.info("wrote %s: llama.cpp gpt2, %s, %d tensors", path, gguf_type, len(model.state_dict()))
    return path
