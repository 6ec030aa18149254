"""Tokenize a corpus into token shards, on all cores, resumably, in flat memory.

The tokenizer is GPT-2's by default, or `char` (the corpus's sorted unique characters, as nanoGPT's
character-level `prepare.py`), or any tokenizer folder or Hub id (`nano_gpt.tokenizer.resolve_tokenizer`).
Each document becomes the tokenizer's end-of-text token followed by `encode_ordinary(text)` (so
`<|endoftext|>` written inside a document is plain text); a character vocabulary has no such token, and its
documents simply follow each other, as in nanoGPT. The token stream is cut into shards of `tokens_per_shard` tokens,
documents running across shard boundaries, as in the GPT-2 reproduction.

Documents are streamed: the main process reads them, cuts long ones into pieces (at points where GPT-2's
pre-tokenizer splits anyway, so the tokens are those of the whole text), and sends batches of pieces to
a worker pool, keeping a few batches in flight and taking results back in order. Memory is bounded
by those batches, whatever the corpus size.

Crash safety: a shard is written to a recorded temp (`files.temp_path`), fsynced and renamed; then a line recording it and the
stream position after it is appended to `progress.jsonl`. A rerun resumes after the last recorded shard,
rewriting whatever came after, and the manifest is written last, once every shard it names is checked to
be on disk; the temps of killed runs are removed then. A full disk stops the run with one line and keeps the
whole shards, so the same command goes on when there is room. The result does not depend on where runs were killed, nor on the number of workers or the
start method.

Concurrency: a process holds the split's lock (`shards.split_lock`) while it prepares the split, so a
second run on the same split waits, then finds it finished (or prepared with other options: one error
line).
"""

import errno
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from nano_gpt.data.shards import (DEFAULT_DATASET_DIR, MANIFEST, PROGRESS, SHARD_DTYPES, check_shard_sizes,
                                  dtype_for_vocab, is_prepared, is_shard_name, load_manifest, shard_name, shard_ok, split_dir,
                                  split_lock, write_json_atomic)
from nano_gpt.data.sources import Split, dataset_splits, default_validation_tokens
from nano_gpt.defaults import DEFAULT_TOKENS_PER_SHARD
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write, discard_temp, os_error_message, remove_stale_temps, temp_path
from nano_gpt.tokenizer import (CharTokenizer, HFTokenizer, Tokenizer, describe_tokenizer, get_tokenizer, is_gpt2,
                                resolve_tokenizer, tokenizer_from_record, tokenizer_record)

logger = logging.getLogger(__name__)

PIECE_CHARS = 1 << 16  # long documents are cut into pieces of about this size, so one document uses many cores
BATCH_CHARS = 1 << 18  # characters sent to a worker at a time
LOG_EVERY_S = 10.0
LARGE_TOKENS = 1_000_000_000  # a split this large is announced with its size before it is prepared

Batch = list[tuple[int, bool, str]]  # (document index, piece starts the document, text)
Encoded = tuple[list[tuple[int, int]], np.ndarray]  # ((document index, tokens) per piece, all tokens)

# The tokenizer of the split being written, in this process and (inherited, or set by `_init_worker`) in workers.
_tokenizer: Tokenizer | None = None


@dataclass(frozen=True)
class PreparedSplit:
    directory: Path
    manifest: dict[str, Any]
    reused: bool  # it was already prepared, so nothing was done


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pieces(text: str, cuttable: bool = True) -> Iterator[str]:
    """`text` in pieces of about PIECE_CHARS, cut only at a space between two letters.

    GPT-2's pre-tokenizer always splits there: the letters before end a word (or a contraction) and the
    space starts the next word (` ?\\p{L}+`), so no pre-token spans the cut and BPE, which merges only
    inside pre-tokens, gives the pieces exactly the tokens of the whole text. (`str.isalpha` is \\p{L}.)
    A character tokenizer may be cut anywhere; another tokenizer's pre-tokenizer is unknown, so its documents
    are never cut (`cuttable` False).
    """
    if not cuttable:
        yield text
        return
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.find(" ", start + PIECE_CHARS)
        while cut != -1 and not (text[cut - 1].isalpha() and cut + 1 < len(text) and text[cut + 1].isalpha()):
            cut = text.find(" ", cut + 1)
        if cut == -1:
            break
        yield text[start:cut]
        start = cut
    yield text[start:]


def _batches(documents: Iterable[str], first_document: int, cuttable: bool = True) -> Iterator[Batch]:
    batch: Batch = []
    chars = 0
    for document, text in enumerate(documents, first_document):
        for i, piece in enumerate(_pieces(text, cuttable)):
            batch.append((document, i == 0, piece))
            chars += len(piece)
            if chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(record: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent handles it
    # A worker whose parent was killed (SIGKILL, the out-of-memory killer) would wait on the task queue
    # forever, keeping the descriptors it inherited, the split's lock among them: leave with the parent.
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    global _tokenizer
    try:
        # Under fork the parent's tokenizer is inherited; under spawn each worker builds its own (under a second).
        _tokenizer = _tokenizer or tokenizer_from_record(record)
    except Exception:  # noqa: BLE001 - raised again by the first batch, where it reaches the user as one line
        pass


def _encode_ordinary(text: str) -> np.ndarray:
    """`encode_ordinary(text)` as a numpy array (special-token text is plain text), without a list of Python
    ints: about 10% faster. Lone surrogates (valid in JSON, not in UTF-8) become U+FFFD, as in `encode_ordinary`."""
    if _tokenizer is None:
        raise NanoGPTError("the tokenizer could not be built in a worker process; run with --num-workers=1 to see why")
    if isinstance(_tokenizer, CharTokenizer):
        return _tokenizer.encode_to_numpy(text)
    if not is_gpt2(_tokenizer):
        return np.array(_tokenizer.encode_ordinary(text), dtype=np.uint32)
    encoding = get_tokenizer()
    try:
        return encoding.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:
        return encoding.encode_to_numpy(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"),
                                        disallowed_special=())


def _encode_batch(batch: Batch) -> Encoded:
    """Runs in a worker: each piece's tokens, with `<|endoftext|>` before each document.

    Any failure comes back as one NanoGPTError naming the document: a pool would otherwise show the
    worker's traceback.
    """
    counts: list[tuple[int, int]] = []
    arrays: list[np.ndarray] = []
    eot = np.array([] if _tokenizer.eot_token is None else [_tokenizer.eot_token], dtype=np.uint32)
    for document, starts_document, text in batch:
        try:
            tokens = _encode_ordinary(text)
        except NanoGPTError:
            raise
        except Exception as e:  # noqa: BLE001 - MemoryError on a giant piece, a tokenizer failure
            raise NanoGPTError(f"tokenizing document {document:,} (counting from 0) failed: {type(e).__name__}: "
                               f"{e}; run with --debug for the traceback") from e
        arrays += [eot, tokens] if starts_document else [tokens]
        counts.append((document, len(tokens) + len(eot) * starts_document))
    return counts, np.concatenate(arrays).astype(_shard_dtype(_tokenizer))


def _shard_dtype(tokenizer: Tokenizer) -> np.dtype:
    return SHARD_DTYPES[dtype_for_vocab(tokenizer.n_vocab)]


class _Encoder:
    """Encodes batches in order: in this process for one worker, else in a process pool started on first use.

    A `ProcessPoolExecutor`, not a `multiprocessing.Pool`: a worker that dies (the out-of-memory killer)
    breaks it with an error, where a `Pool` would wait forever for the lost batch.
    """

    def __init__(self, num_workers: int, start_method: str | None, stack: ExitStack, tokenizer: Tokenizer) -> None:
        global _tokenizer
        self.num_workers, self.start_method, self._stack = num_workers, start_method, stack
        self._pool: ProcessPoolExecutor | None = None
        _tokenizer = self.tokenizer = tokenizer  # set before the pool starts, so forked workers inherit it
        self.record = tokenizer_record(tokenizer)
        self._stack.callback(globals().__setitem__, "_tokenizer", None)

    def __call__(self, batches: Iterable[Batch]) -> Iterator[Encoded]:
        if self.num_workers == 1:
            yield from map(_encode_batch, batches)
            return
        if self._pool is None:
            context = multiprocessing.get_context(self.start_method)
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=context, initializer=_init_worker,
                                             initargs=(self.record,))
            self._stack.callback(self._pool.shutdown, wait=True, cancel_futures=True)
        pending: deque[Future] = deque()  # a few batches in flight: results come back in order, memory stays bounded
        try:
            for batch in batches:
                pending.append(self._pool.submit(_encode_batch, batch))
                if len(pending) >= 2 * self.num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as e:
            raise NanoGPTError(f"a tokenizer process died ({e}); if the machine ran out of memory, run again with "
                               "fewer --num-workers: the run resumes where it stopped") from e
        finally:  # the caller may stop early (counting tokens): drop the batches still queued
            for future in pending:
                future.cancel()


def _token_pieces(encoded: Iterable[Encoded]) -> Iterator[tuple[int, int, np.ndarray]]:
    """(document index, offset of the piece's first token in its document, tokens) per piece."""
    document, offset = -1, 0
    for counts, tokens in encoded:
        start = 0
        for piece_document, n in counts:
            if piece_document != document:
                document, offset = piece_document, 0
            yield document, offset, tokens[start:start + n]
            start += n
            offset += n


class _Progress:
    """A rich progress bar on a terminal; plain log lines every LOG_EVERY_S seconds otherwise.

    The rate shown is the mean since the start: rich's own `speed` swings with results that arrive in bursts.
    """

    def __init__(self, description: str, total: int | None, completed: int) -> None:
        self.description, self.completed, self._initial, self._total = description, completed, completed, total
        self._start = self._last_log = time.monotonic()
        console = Console(stderr=True)
        self._bar = None
        if console.is_terminal:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} tokens"),
                                 TextColumn("{task.fields[rate]:,.0f} tokens/s"), TimeRemainingColumn(), console=console)
            self._task = self._bar.add_task(description, total=max(total, completed) if total else None,
                                            completed=completed, rate=0)

    def __enter__(self) -> "_Progress":
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, n: int) -> None:
        self.completed += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, rate=self._rate())
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            left = ""
            if self._total and self._total > self.completed and self._rate() > 0:
                left = f", about {(self._total - self.completed) / self._rate() / 60:,.0f} min left"
            logger.info("%s: %s tokens, %s tokens/s%s", self.description, f"{self.completed:,}", f"{self._rate():,.0f}",
                        left)

    def _rate(self) -> float:
        return (self.completed - self._initial) / max(time.monotonic() - self._start, 1e-9)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=self.completed)
            self._bar.stop()
        if kind is None:
            logger.info("%s: %s tokens in %.1f s (%s tokens/s)", self.description, f"{self.completed:,}",
                        time.monotonic() - self._start, f"{self._rate():,.0f}")


class _ProgressLog:
    """`progress.jsonl`: the options, then per finished shard its record and the stream position after it.

    On open it keeps the longest prefix of records whose shard files are whole, drops anything after
    (a line half-written by a kill, a shard lost with the machine), and rewrites the file clean.
    """

    def __init__(self, directory: Path, options: dict[str, Any], dtype: np.dtype) -> None:
        self.path = directory / PROGRESS
        self.records: list[dict[str, Any]] = []
        # Bytes a kill or a disk garbled make a line that is not JSON: the records stop before it.
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines() if self.path.exists() else []
        if lines and _json_or_none(lines[0]) == {"options": options}:
            for line in lines[1:]:
                record = _json_or_none(line)
                if not _whole_record(directory, record, len(self.records), dtype):
                    break
                self.records.append(record)
        elif lines:
            logger.info("%s: the options changed since the interrupted run; starting over", directory)
        if self.records:
            logger.info("%s: resuming after %d shards", directory, len(self.records))
        lines = [json.dumps({"options": options})] + [json.dumps(r) for r in self.records]
        atomic_write(self.path, "".join(line + "\n" for line in lines))
        self._file = open(self.path, "a")

    def resume(self) -> tuple[int, int, int]:
        """(document index, offset in it, stream position) of the first token not yet in a shard."""
        return tuple(self.records[-1]["resume"]) if self.records else (0, 0, 0)

    def append(self, record: dict[str, Any]) -> None:
        # No fsync: a line lost with the machine only means that shard is written again.
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _whole_record(directory: Path, record: Any, index: int, dtype: np.dtype) -> bool:
    """Whether `record` is the progress line of shard `index` and that shard is on disk, whole."""
    return (isinstance(record, dict) and record.get("file") == shard_name(index)
            and isinstance(record.get("tokens"), int) and isinstance(record.get("sha256"), str)
            and isinstance(record.get("resume"), list) and len(record["resume"]) == 3
            and all(isinstance(n, int) for n in record["resume"])
            and shard_ok(directory / record["file"], record["tokens"], dtype))


class _ShardWriter:
    """Streams tokens into `tokens_per_shard`-token shards, each written to a recorded temp, fsynced, renamed."""

    def __init__(self, directory: Path, tokens_per_shard: int, log: _ProgressLog) -> None:
        self.directory, self.tokens_per_shard, self.log = directory, tokens_per_shard, log
        self._file: IO[bytes] | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._digest = hashlib.sha256()

    def write(self, tokens: np.ndarray, document: int, offset: int, position: int) -> None:
        """Append `tokens`, the first being token `offset` of `document` and token `position` of the stream."""
        i = 0
        while i < len(tokens):
            if self._file is None:
                self._tmp = temp_path(self.directory / shard_name(len(self.log.records)))
                self._file = open(self._tmp, "wb")
                self._count, self._digest = 0, hashlib.sha256()
            n = min(len(tokens) - i, self.tokens_per_shard - self._count)
            data = tokens[i:i + n].tobytes()
            self._file.write(data)
            self._digest.update(data)
            self._count += n
            i += n
            if self._count == self.tokens_per_shard:
                self.close_shard((document, offset + i, position + i))

    def close_shard(self, resume: tuple[int, int, int]) -> None:
        if self._file is None or self._tmp is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        name = shard_name(len(self.log.records))
        os.replace(self._tmp, self.directory / name)
        discard_temp(self._tmp)
        self._tmp = None
        self.log.append({"file": name, "tokens": self._count, "sha256": self._digest.hexdigest(), "resume": resume})

    def abandon(self) -> None:
        """Drop the shard being written (the run failed or was stopped): the finished ones stay for a resume."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            discard_temp(self._tmp)
            self._tmp = None


def _clean(directory: Path, keep: set[str]) -> None:
    """Remove the temps of killed runs, the progress log, and shards an earlier run left that are not in `keep`."""
    remove_stale_temps(directory)
    for path in directory.iterdir():
        if path.name == PROGRESS or (is_shard_name(path.name) and path.name not in keep):
            path.unlink()


def _flags(options: dict[str, Any]) -> str:
    """Options as the flags that give them; None is a default that depends on the corpus (no flag)."""
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in sorted(options.items()) if value is not None]
    return " ".join(flags) or "the defaults"


def _finished(directory: Path, options: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an already prepared split, checked against this run's options and its shards' sizes.

    (Hashes are checked by whoever reads the split, once: `shards.verify_split`.)
    """
    path = directory / MANIFEST
    if not path.exists():
        return None
    fix = "pass --force to prepare the split again"
    manifest = load_manifest(path, fix)
    if manifest["options"] != options:
        raise NanoGPTError(f"{directory} was prepared with {_flags(manifest['options'])}, not {_flags(options)}; "
                           "pass --force to prepare it again")
    check_shard_sizes(directory, manifest, fix)
    _clean(directory, {s["file"] for s in manifest["shards"]})  # leftovers of a kill after the manifest
    return manifest


def _write_split(dataset: str, name: str, split: Split, directory: Path, options: dict[str, Any],
                 tokens_per_shard: int, encoder: _Encoder, stream_cut: int | None) -> dict[str, Any]:
    """Write one split's shards, then its manifest; `stream_cut` is where a stream shared with a sibling split
    was cut when no flag said (recorded, so that the sibling is cut at the same token)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = encoder.tokenizer
    log = _ProgressLog(directory, options, _shard_dtype(tokenizer))
    has_eot = tokenizer.eot_token is not None
    writer = _ShardWriter(directory, tokens_per_shard, log)
    try:
        last = resume_document, resume_offset, position = log.resume()
        end = None if split.max_tokens is None else split.skip_tokens + split.max_tokens
        done = sum(r["tokens"] for r in log.records)
        # An empty corpus (no text, perhaps empty documents) is told apart from one used up by validation.
        text_tokens, whole_stream, resumed = 0, True, bool(log.records)
        with _Progress(f"{dataset} {name}", split.approx_tokens, done) as progress:
            if end is None or position < end:
                documents = itertools.islice(split.documents(), resume_document, None)
                batches = _batches(documents, resume_document, cuttable=not isinstance(tokenizer, HFTokenizer))
                for document, offset, tokens in _token_pieces(encoder(batches)):
                    text_tokens += len(tokens) - (has_eot and offset == 0 and len(tokens) > 0)  # not the end-of-text
                    if document == resume_document and offset < resume_offset:  # in a shard of a killed run
                        cut = min(resume_offset - offset, len(tokens))
                        tokens, offset = tokens[cut:], offset + cut
                    if position < split.skip_tokens:  # belongs to an earlier split
                        cut = min(split.skip_tokens - position, len(tokens))
                        tokens, offset, position = tokens[cut:], offset + cut, position + cut
                    if end is not None:
                        tokens = tokens[:end - position]
                    writer.write(tokens, document, offset, position)
                    position += len(tokens)
                    last = (document, offset + len(tokens), position)
                    progress.advance(len(tokens))
                    if end is not None and position >= end:
                        whole_stream = False
                        break
            writer.close_shard(last)  # the last, partial shard
    finally:
        writer.abandon()
        log.close()
    shards = [{key: r[key] for key in ("file", "tokens", "sha256")} for r in log.records]
    total = sum(s["tokens"] for s in shards)
    empty = text_tokens == 0 and whole_stream and not resumed
    if total == 0 or empty:
        shutil.rmtree(directory)
        if end == 0:
            raise NanoGPTError(f"the {name} split of {dataset!r} would be empty: --validation-tokens=0")
        if empty:
            raise NanoGPTError(f"the corpus is empty: the {name} split of {dataset!r} holds no text")
        raise NanoGPTError(f"the {name} split of {dataset!r} has no tokens: the corpus has {position:,}, all of them "
                           f"in the first {split.skip_tokens:,}, the validation split; lower --validation-tokens")
    manifest = {"dataset": dataset, "split": name, "tokenizer": encoder.record, "eot_token": tokenizer.eot_token,
                "dtype": dtype_for_vocab(tokenizer.n_vocab), "options": options,
                **({} if stream_cut is None else {"cut": stream_cut}), "tokens": total, "shards": shards}
    # A shard deleted meanwhile (by hand, by a cleaner) must not end in a manifest that names it.
    check_shard_sizes(directory, manifest, "something changed it while the split was being prepared; run the same "
                                           "command again, which rewrites it")
    write_json_atomic(directory / MANIFEST, manifest)
    _clean(directory, {s["file"] for s in shards})
    return manifest


def _os_error(e: OSError) -> str:
    """An OS error as a short reason naming the path: "Permission denied: dataset_cache/x"."""
    paths = ", ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{e.strerror}: {paths}" if e.strerror and paths else str(e)


def _count_tokens(documents: Iterator[str], encoder: _Encoder, limit: int) -> tuple[int, int]:
    """(tokens, tokens that are text rather than <|endoftext|>) of a stream, counting stops after `limit` tokens."""
    tokens = text = 0
    eot = encoder.tokenizer.eot_token
    for _, encoded in encoder(_batches(documents, 0, cuttable=not isinstance(encoder.tokenizer, HFTokenizer))):
        tokens += len(encoded)
        text += len(encoded) - (0 if eot is None else int(np.count_nonzero(encoded == eot)))
        if tokens >= limit:
            break
    return tokens, text


def _siblings(dataset_dir: Path, dataset: str, others: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests of the dataset's prepared splits that this run leaves alone, once each is checked to have
    been made with this run's settings: splits cut from one stream (a local corpus's train and validation)
    made with two --validation-tokens would overlap, and validation losses would quietly be wrong."""
    found = []
    for other in others:
        path = split_dir(dataset_dir, dataset, other) / MANIFEST
        if not path.is_file():
            continue
        manifest = load_manifest(path, f"pass --force --splits={other} with the others to prepare it again")
        if manifest["options"] != options:
            words = ["nano-gpt", "prepare_dataset", f"--dataset={shlex.quote(dataset)}", "--force"]
            if Path(dataset_dir) != DEFAULT_DATASET_DIR:
                words.append(f"--dataset-dir={shlex.quote(str(dataset_dir))}")
            raise NanoGPTError(f"the {other} split in {path.parent} was prepared with {_flags(manifest['options'])}, "
                               f"this run would use {_flags(options)}: a dataset's splits are made with one setting, "
                               f"or their tokens may overlap; pass the same settings, or prepare every split again "
                               f"with `{' '.join(words)}` and the settings you want")
        found.append(manifest)
    return found


def _sibling_cut(siblings: list[dict[str, Any]]) -> int | None:
    """Where a sibling split cut the shared stream when no flag said, so this split is cut at the same token
    (counting again could land elsewhere: the corpus may have changed since)."""
    cuts = [m["cut"] for m in siblings if isinstance(m.get("cut"), int) and not isinstance(m.get("cut"), bool)]
    return cuts[0] if cuts else None


def prepare_dataset(dataset: str, splits: Sequence[str] = ("train", "validation"),
                    dataset_dir: Path = DEFAULT_DATASET_DIR, tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD,
                    validation_tokens: int | None = None, text_column: str = "text", num_workers: int | None = None,
                    force: bool = False, start_method: str | None = None, tokenizer: str = "gpt2",
                    eot_token: str | None = None) -> dict[str, PreparedSplit]:
    """Tokenize `splits` of `dataset` into shards under `dataset_dir`; a finished split is kept unless `force`.

    `dataset` is a `DATASETS` name, `hf:OWNER/NAME[:CONFIG]`, or local files (see `sources.py`). `tokenizer` is
    gpt2, char or a tokenizer folder or Hub id (`nano_gpt.tokenizer.resolve_tokenizer`; `eot_token` names the
    token between documents where it has none); each tokenizer's shards go to their own folder.
    `validation_tokens` is how many leading tokens go to validation in a corpus that has no validation
    split of its own; by default one shard, and for local files 10% of the corpus, at most one shard
    (found by counting its tokens first, up to ten shards' worth). `start_method` is multiprocessing's
    (default: the platform's). Each split is prepared under its lock: a concurrent run on the same split
    waits for this one.
    """
    if not splits:
        raise NanoGPTError("no splits to prepare; pass for example --splits=train,validation")
    if tokens_per_shard < 1:
        raise NanoGPTError(f"--tokens-per-shard={tokens_per_shard} must be at least 1")
    if validation_tokens is not None and validation_tokens < 0:
        raise NanoGPTError(f"--validation-tokens={validation_tokens} must be at least 0")
    if num_workers is not None and num_workers < 1:
        raise NanoGPTError(f"--num-workers={num_workers} must be at least 1")
    if num_workers is not None and num_workers > (most := max(32, 4 * available_cpus())):
        # Each worker is a process: a typo's worth of them would exhaust the machine (or overflow a C int).
        raise NanoGPTError(f"--num-workers={num_workers} is more tokenizer processes than this machine can use "
                           f"({available_cpus()} cores); pass at most {most}")
    sources = dataset_splits(dataset, validation_tokens, tokens_per_shard, text_column)
    if unknown := [s for s in splits if s not in sources]:
        raise NanoGPTError(f"dataset {dataset!r} has no split {unknown[0]!r}; its splits are {', '.join(sources)}")
    options = {**next(iter(sources.values())).options, "tokens_per_shard": tokens_per_shard}
    siblings = _siblings(dataset_dir, dataset, [s for s in sources if s not in splits], options)
    prepared = {}
    corpus_validation_tokens: int | None = None  # for uncut splits, counted once, when a split must be written
    with ExitStack() as stack:
        encoders: list[_Encoder] = []

        def encoder_once() -> _Encoder:
            """Built when a split must be written: a char vocabulary reads the whole corpus first."""
            if not encoders:
                streams = list({id(s.documents): s.documents for s in sources.values()}.values())
                chosen = resolve_tokenizer(tokenizer, lambda: itertools.chain.from_iterable(d() for d in streams),
                                           eot_token)
                logger.info("tokenizing %s with %s", dataset, describe_tokenizer(tokenizer_record(chosen)))
                encoders.append(_Encoder(num_workers or available_cpus(), start_method, stack, chosen))
            return encoders[0]

        for name in splits:
            directory = split_dir(dataset_dir, dataset, name, tokenizer)
            split = sources[name]
            options = {**split.options, "tokens_per_shard": tokens_per_shard}
            try:
                with split_lock(directory):
                    if force and directory.exists():
                        shutil.rmtree(directory)
                    if (manifest := _finished(directory, options)) is not None:
                        logger.info("%s is already prepared; pass --force to prepare it again", directory)
                        prepared[name] = PreparedSplit(directory, manifest, reused=True)
                        continue
                    stream_cut = None
                    if split.uncut is not None:
                        if corpus_validation_tokens is None:
                            corpus_validation_tokens = _sibling_cut(siblings)
                        if corpus_validation_tokens is None:
                            logger.info("counting the tokens of %s to give 10%% of them (at most one shard) to "
                                        "validation; --validation-tokens=N skips this", dataset)
                            tokens, text = _count_tokens(split.documents(), encoder_once(), limit=10 * tokens_per_shard)
                            if text == 0:
                                raise NanoGPTError(f"the corpus is empty: {dataset!r} holds no text")
                            corpus_validation_tokens = default_validation_tokens(tokens, tokens_per_shard)
                        split, stream_cut = split.cut(corpus_validation_tokens), corpus_validation_tokens
                    encoder = encoder_once()
                    if split.approx_tokens and split.approx_tokens >= LARGE_TOKENS:
                        # Said before the hours of work start; the progress shows the time left once a rate is measured.
                        size = split.approx_tokens * _shard_dtype(encoder.tokenizer).itemsize / 1e9
                        logger.warning("the %s split of %s is about %s tokens: %.1f GB of shards in %s; preparing it "
                                       "takes hours on a laptop (progress and time left follow)", name, dataset,
                                       f"{split.approx_tokens:,}", size, directory)
                    manifest = _write_split(dataset, name, split, directory, options, tokens_per_shard, encoder,
                                            stream_cut)
                    prepared[name] = PreparedSplit(directory, manifest, reused=False)
            except OSError as e:  # a read-only or full disk, a file where a folder should be, and the like
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # the shards written so far stay: a resume
                    raise NanoGPTError(f"the {name} split: {os_error_message(e, directory)}; the same command then "
                                       "goes on from the last whole shard") from e
                raise NanoGPTError(f"cannot prepare the {name} split in {directory}: {_os_error(e)}") from e
    return prepared


def prepare_missing(dataset: str, splits: Sequence[str], dataset_dir: Path = DEFAULT_DATASET_DIR,
                    tokenizer: str = "gpt2") -> None:
    """Prepare those of `splits` that are not prepared yet, exactly as `prepare_dataset` does (its locks, checks
    and progress), saying so in one log line: what `nano-gpt train` does before its first step.

    Processes that call this at once (torchrun's ranks) take turns under each split's lock: the first prepares
    it, the others wait and then find it finished.
    """
    missing = [s for s in splits if not is_prepared(dataset_dir, dataset, s, tokenizer)]
    if not missing:
        return
    logger.info("dataset %s is not prepared with --tokenizer=%s: preparing its %s split%s in %s first, as "
                "`nano-gpt prepare_dataset` would (--no-prepare refuses instead)", dataset, tokenizer,
                " and ".join(missing), "s" * (len(missing) > 1), split_dir(dataset_dir, dataset, "", tokenizer))
    prepare_dataset(dataset, missing, dataset_dir=dataset_dir, tokenizer=tokenizer)
