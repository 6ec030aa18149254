"""Where documents come from: named datasets, Hugging Face datasets and local files.

`dataset_splits(dataset)` gives a `Split` per split name. A split's `documents()` opens a fresh, lazy
stream of texts (one document or one parquet batch in memory at a time), and `skip_tokens` and
`max_tokens` say which stretch of that stream's tokens belongs to the split, so a corpus with no
validation split can give its first tokens to validation, as the GPT-2 reproduction does with FineWeb-Edu.

The `--dataset` syntax:
- a name in `DATASETS` (`tinyshakespeare`, `finewebedu`); add one by adding a function there;
- `hf:OWNER/NAME` or `hf:OWNER/NAME:CONFIG`: any Hugging Face dataset with a text column, streamed with
  `datasets` (a local folder of parquet/jsonl files works too: `hf:./my_dataset`);
- local files: a `.txt`, `.jsonl` or `.parquet` file, a glob (`./corpus/*.txt`) or a folder. Each `.txt`
  file is one document; each `.jsonl` line and each parquet row is one document. Unless told otherwise,
  their validation split is 10% of their tokens, at most one shard (`default_validation_tokens`).

Bad input (text that is not UTF-8, a text field that is not a string, a file that is not parquet) is one
NanoGPTError naming the file, and the line for jsonl.
"""

import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from nano_gpt.cache import cached_download
from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_CACHED = "tinyshakespeare/input.txt"  # its path in the download cache
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
BYTES_PER_TOKEN = 4  # about right for English under GPT-2's BPE; only used to estimate an ETA


@dataclass(frozen=True)
class Split:
    """One split: its document stream and the stretch of that stream's tokens that belongs to it."""

    documents: Callable[[], Iterator[str]]  # a fresh stream on every call: resuming restarts it
    skip_tokens: int = 0  # tokens at the start of the stream that belong to another split
    max_tokens: int | None = None
    approx_tokens: int | None = None  # for the progress bar's ETA
    options: dict[str, int | str | None] = field(default_factory=dict)  # the flags that shaped it, kept in the manifest
    # "head" (validation) or "tail" (train) of a stream cut where only its token count says (`cut`)
    uncut: str | None = None

    def cut(self, validation_tokens: int) -> "Split":
        """This head or tail split with its stretch of the stream fixed: validation the first `validation_tokens`."""
        if self.uncut == "head":
            return replace(self, max_tokens=validation_tokens, approx_tokens=validation_tokens, uncut=None)
        approx = None if self.approx_tokens is None else max(self.approx_tokens - validation_tokens, 0)
        return replace(self, skip_tokens=validation_tokens, approx_tokens=approx, uncut=None)


def default_validation_tokens(corpus_tokens: int, tokens_per_shard: int) -> int:
    """A local corpus's validation split when none is asked for: 10% of its tokens, at least 1, at most one shard."""
    return min(tokens_per_shard, max(1, corpus_tokens // 10))


def _head_and_tail(documents: Callable[[], Iterator[str]], validation_tokens: int | None, approx_tokens: int | None,
                   options: dict[str, int | str | None]) -> dict[str, Split]:
    """Validation is the first `validation_tokens` tokens of the stream, train the rest.

    With `validation_tokens=None` the splits stay uncut: whoever writes them counts the stream's tokens and
    cuts them at `default_validation_tokens` (the manifest records None: the size follows from the corpus).
    """
    options = {**options, "validation_tokens": validation_tokens}
    splits = {"train": Split(documents, approx_tokens=approx_tokens, options=options, uncut="tail"),
              "validation": Split(documents, options=options, uncut="head")}
    if validation_tokens is None:
        return splits
    return {name: split.cut(validation_tokens) for name, split in splits.items()}


def tinyshakespeare_path() -> Path:
    """The corpus in the project cache, downloaded and sha256-checked on first use."""
    return cached_download(TINYSHAKESPEARE_URL, TINYSHAKESPEARE_CACHED, sha256=TINYSHAKESPEARE_SHA256)


def _tinyshakespeare(validation_tokens: int) -> dict[str, Split]:
    """One document, split 90/10 at a character: each split is `<|endoftext|>` plus its part's tokens."""

    def part(train: bool) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            text = tinyshakespeare_path().read_text(encoding="utf-8")
            cut = int(0.9 * len(text))
            yield text[:cut] if train else text[cut:]

        return documents

    # Exact: the file is fixed by its sha256.
    return {"train": Split(part(True), approx_tokens=301_967), "validation": Split(part(False), approx_tokens=36_060)}


def _finewebedu(validation_tokens: int) -> dict[str, Split]:
    """FineWeb-Edu's 10-billion-token sample; its first shard of tokens is the validation split."""
    return _hf_splits("HuggingFaceFW/fineweb-edu", "sample-10BT", "text", validation_tokens,
                      approx_tokens=10_000_000_000)


DATASETS: dict[str, Callable[[int], dict[str, Split]]] = {
    "tinyshakespeare": _tinyshakespeare,
    "finewebedu": _finewebedu,
}


def _parse_hf(dataset: str) -> tuple[str, str | None]:
    """`hf:PATH[:CONFIG]` as (PATH, CONFIG); a colon inside a Windows path is not a config."""
    spec = dataset.removeprefix("hf:")
    path, sep, config = spec.rpartition(":")
    if sep and path and config and not re.search(r"[/\\]", config):
        return path, config
    return spec, None


def _hf_splits(path: str, config: str | None, text_column: str, validation_tokens: int,
               approx_tokens: int | None = None) -> dict[str, Split]:
    import datasets

    from nano_gpt.hub import hub_reachable  # a quick offline check: datasets retries for long

    if not path:
        raise NanoGPTError("--dataset=hf: needs a dataset: --dataset=hf:OWNER/NAME or hf:OWNER/NAME:CONFIG")
    if not Path(path).expanduser().exists() and not os.environ.get("HF_DATASETS_OFFLINE") and not hub_reachable():
        raise NanoGPTError(f"cannot reach the Hugging Face Hub for dataset {path!r}; connect to the network, "
                           "or pass local files: --dataset='./corpus/*.jsonl'")
    try:
        names = datasets.get_dataset_split_names(path, config)
    except Exception as e:  # unknown dataset or config, offline, gated: all mean "cannot open it"
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        named = f"{path!r}" if config is None else f"{path!r} (config {config!r})"
        raise NanoGPTError(f"cannot open Hugging Face dataset {named}: {reason}") from e

    def stream(split: str) -> Callable[[], Iterator[str]]:
        def documents() -> Iterator[str]:
            ds = datasets.load_dataset(path, config, split=split, streaming=True)
            if ds.column_names is not None and text_column not in ds.column_names:
                raise NanoGPTError(f"dataset {path!r} has no column {text_column!r} (it has {ds.column_names}); "
                                   "pass --text-column=NAME")
            try:
                for batch in ds.select_columns([text_column]).iter(batch_size=1000):
                    for text in batch[text_column]:
                        if text is not None:
                            yield _checked_text(text, f"a row of {path!r}", text_column)
            except OSError as e:  # the connection dropped: what is written so far is kept
                raise NanoGPTError(f"reading Hugging Face dataset {path!r} failed ({e}); run the same command "
                                   "again to resume") from e

        return documents

    options = {"text_column": text_column}
    splits = {name: Split(stream(name), options=options) for name in names}
    if "validation" not in names and "train" in names:
        splits.update(_head_and_tail(stream("train"), validation_tokens, approx_tokens, options))
    return splits


def _local_files(pattern: str) -> list[Path]:
    path = Path(pattern).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in LOCAL_SUFFIXES and p.is_file())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise NanoGPTError(f"--dataset={pattern} matches no files; pass one of {', '.join(DATASETS)}, "
                           "hf:OWNER/NAME[:CONFIG], or a .txt, .jsonl or .parquet file, glob or folder")
    if unknown := [p for p in files if p.suffix not in LOCAL_SUFFIXES]:
        raise NanoGPTError(f"{unknown[0]} is not a .txt, .jsonl or .parquet file; narrow --dataset={pattern}")
    return files


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _checked_text(value: object, where: str, text_column: str) -> str:
    """`value` if it is a string; else a NanoGPTError saying where (a number would tokenize as nothing useful)."""
    if not isinstance(value, str):
        raise NanoGPTError(f"{where}: {text_column!r} is {_json_kind(value)}, not a string; fix the data or pass "
                           "--text-column=NAME")
    return value


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn the OS's errors while reading `path` (permissions, a file gone) into one line."""
    try:
        yield
    except OSError as e:
        raise NanoGPTError(f"cannot read {path}: {e.strerror or e}") from e


def _jsonl_documents(path: Path, text_column: str) -> Iterator[str]:
    with _reading(path), open(path, "rb") as lines:  # bytes, so a bad byte is reported with its line
        for number, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise NanoGPTError(f"{path}:{number} is not UTF-8 text ({e.reason} at byte {e.start} of the "
                                   "line)") from e
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_column]
            except (ValueError, TypeError, KeyError, IndexError, RecursionError) as e:
                raise NanoGPTError(f"{path}:{number} is not a JSON object with a {text_column!r} string "
                                   f"({type(e).__name__}); fix the line or pass --text-column=NAME") from e
            yield _checked_text(text, f"{path}:{number}", text_column)


def _parquet_documents(path: Path, text_column: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _reading(path):
        try:
            parquet = pq.ParquetFile(path)
        except pa.ArrowException as e:
            raise NanoGPTError(f"{path} is not a parquet file ({str(e).splitlines()[0]})") from e
        schema = parquet.schema_arrow
        if text_column not in schema.names:
            raise NanoGPTError(f"{path} has no column {text_column!r} (it has {schema.names}); pass --text-column=NAME")
        kind = schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise NanoGPTError(f"{path}: column {text_column!r} holds {kind}, not strings; pass --text-column=NAME")
        try:
            for batch in parquet.iter_batches(batch_size=1024, columns=[text_column]):
                yield from (text for text in batch.column(0).to_pylist() if text is not None)
        except pa.ArrowException as e:
            raise NanoGPTError(f"{path} cannot be read: {str(e).splitlines()[0]}") from e


def _local_splits(pattern: str, text_column: str, validation_tokens: int | None) -> dict[str, Split]:
    files = _local_files(pattern)

    def documents() -> Iterator[str]:
        for path in files:
            if path.suffix == ".txt":
                try:
                    with _reading(path):
                        text = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise NanoGPTError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
                yield text
            elif path.suffix == ".jsonl":
                yield from _jsonl_documents(path, text_column)
            else:
                yield from _parquet_documents(path, text_column)

    approx = None if any(p.suffix == ".parquet" for p in files) else sum(p.stat().st_size for p in files) // BYTES_PER_TOKEN
    return _head_and_tail(documents, validation_tokens, approx, {"text_column": text_column})


def dataset_splits(dataset: str, validation_tokens: int | None, tokens_per_shard: int,
                   text_column: str = "text") -> dict[str, Split]:
    """The splits of `dataset` (a `DATASETS` name, `hf:...`, or local files), opened lazily.

    `validation_tokens=None` means the default: one shard, or for local files 10% of the corpus (uncut
    splits, see `Split.cut`).
    """
    if dataset in DATASETS:
        return DATASETS[dataset](tokens_per_shard if validation_tokens is None else validation_tokens)
    if dataset.startswith("hf:"):
        return _hf_splits(*_parse_hf(dataset), text_column,
                          tokens_per_shard if validation_tokens is None else validation_tokens)
    return _local_splits(dataset, text_column, validation_tokens)


def _slug(kind: str, identity: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", identity).strip("-.")[-48:].strip("-.")
    return f"{kind}-{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def dataset_folder(dataset: str, tokenizer: str = "gpt2") -> str:
    """The folder of `dataset` tokenized by `--tokenizer=tokenizer`: `dataset_slug`, plus `.char` or the
    tokenizer's own slug for any tokenizer but GPT-2's, so one corpus prepared with two tokenizers keeps both."""
    if tokenizer == "gpt2":
        return dataset_slug(dataset)
    if tokenizer == "char":
        return f"{dataset_slug(dataset)}.char"
    path = Path(tokenizer).expanduser()
    return f"{dataset_slug(dataset)}.{_slug('tok', os.path.abspath(path) if path.exists() else tokenizer)}"


def dataset_slug(dataset: str) -> str:
    """The folder of `dataset` under the dataset dir: the name itself for a `DATASETS` name, otherwise
    derived from the Hub name or the absolute path, so the same corpus always lands in the same folder."""
    if dataset in DATASETS:
        return dataset
    if dataset.startswith("hf:"):
        path, config = _parse_hf(dataset)
        if Path(path).expanduser().exists():
            path = os.path.abspath(Path(path).expanduser())
        return _slug("hf", path if config is None else f"{path}:{config}")
    return _slug("local", os.path.abspath(Path(dataset).expanduser()))
