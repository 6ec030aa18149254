"""The on-disk layout of prepared datasets, shared by `prepare_dataset` and `ShardLoader`, and its checks.

    DATASET_DIR/<folder>/<split>/shard_000000.bin ...   raw little-endian uint16 (or uint32) tokens, no header
    DATASET_DIR/<folder>/<split>/manifest.json          written last: its presence means "done"
    DATASET_DIR/<folder>/<split>/.verified.json         shards already hashed, so they are hashed once
    DATASET_DIR/<folder>/.<split>.lock                  held while a process prepares or verifies the split

<folder> is the dataset's slug, plus `.char` or the tokenizer's slug for any tokenizer but GPT-2's
(`sources.dataset_folder`). A shard reads back with `np.memmap(path, dtype=shard_dtype(manifest), mode="r")`:
uint16 where the vocabulary fits (GPT-2's, a character set), uint32 where it does not. The manifest holds the
dataset, split, the tokenizer's record (`nano_gpt.tokenizer.tokenizer_record`), the shards' dtype, the options
that shaped the shards, the token total, and each shard's file name, token count and sha256.
"""

import hashlib
import json
import logging
import re
import shlex
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from nano_gpt.data.sources import dataset_folder
from nano_gpt.defaults import DEFAULT_DATASET_DIR
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write
from nano_gpt.tokenizer import EOT_TOKEN, VOCAB_SIZE, describe_tokenizer

logger = logging.getLogger(__name__)

SHARD_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
SHARD_DTYPE = SHARD_DTYPES["uint16"]  # GPT-2's
MANIFEST = "manifest.json"
PROGRESS = "progress.jsonl"  # only while a split is being prepared
VERIFIED = ".verified.json"
SCAN_BYTES = 1 << 24  # verification reads shards in chunks this size (even: whole tokens)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARD_NAME = re.compile(r"shard_\d{6,}\.bin")


def split_dir(dataset_dir: Path, dataset: str, split: str, tokenizer: str = "gpt2") -> Path:
    return Path(dataset_dir) / dataset_folder(dataset, tokenizer) / split


def dtype_for_vocab(n_vocab: int) -> str:
    """The narrowest shard dtype that holds every id of a vocabulary of `n_vocab` tokens."""
    if n_vocab <= 1 << 16:
        return "uint16"
    if n_vocab <= 1 << 32:
        return "uint32"
    raise NanoGPTError(f"the tokenizer has {n_vocab:,} tokens, more than the 2**32 ids a uint32 shard holds")


def shard_dtype(manifest: dict[str, Any]) -> np.dtype:
    """The dtype of a manifest's shards (manifests from before uint32 shards say uint16, or nothing)."""
    return SHARD_DTYPES[manifest.get("dtype", "uint16")]


def manifest_tokenizer(manifest: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer record of a manifest (manifests from before tokenizers were a choice hold GPT-2's name)."""
    record = manifest.get("tokenizer")
    return record if isinstance(record, dict) else {"kind": "gpt2", "n_vocab": VOCAB_SIZE,
                                                    "eot_token": manifest.get("eot_token")}


def shard_name(index: int) -> str:
    return f"shard_{index:06d}.bin"


def is_shard_name(name: str) -> bool:
    """Whether `name` is one `shard_name` gives: the only files besides its records that a split folder holds."""
    return _SHARD_NAME.fullmatch(name) is not None


def prepare_command(dataset: str, split: str, dataset_dir: Path, tokenizer: str = "gpt2") -> str:
    """The exact command that prepares `split`, for error messages."""
    words = ["nano-gpt", "prepare_dataset", f"--dataset={shlex.quote(dataset)}", f"--splits={split}"]
    if tokenizer != "gpt2":
        words.append(f"--tokenizer={shlex.quote(tokenizer)}")
    if Path(dataset_dir) != DEFAULT_DATASET_DIR:
        words.append(f"--dataset-dir={shlex.quote(str(dataset_dir))}")
    return " ".join(words)


def write_json_atomic(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, through `files.atomic_write`: a kill leaves the old file or the new one."""
    atomic_write(path, json.dumps(obj, indent=1) + "\n")


@contextmanager
def split_lock(directory: Path) -> Iterator[None]:
    """Hold the lock of the split in `directory` (one process prepares or verifies a split at a time).

    The lock file sits beside the split's folder, so `--force` can delete the folder while holding it.
    The lock is an OS file lock: a killed holder releases it. Raises OSError if the lock file cannot be made.
    """
    lock = FileLock(directory.parent / f".{directory.name}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process that is preparing or verifying %s to finish", directory)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def shard_problem(path: Path, tokens: int, dtype: np.dtype = SHARD_DTYPE) -> str | None:
    """What is wrong with the file or size of a shard that should hold `tokens` tokens, or None (no hashing)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "is missing"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not path.is_file():
        return "is not a file"
    expected = tokens * dtype.itemsize
    if info.st_size != expected:
        kind = "is truncated" if info.st_size < expected else "is too long"
        return f"{kind}: {info.st_size:,} bytes where the manifest says {expected:,}"
    return None


def shard_ok(path: Path, tokens: int, dtype: np.dtype = SHARD_DTYPE) -> bool:
    return shard_problem(path, tokens, dtype) is None


def check_shard_sizes(directory: Path, manifest: dict[str, Any], fix: str) -> None:
    """Each shard of `manifest` exists with the size it promises (cheap: no reading), else one NanoGPTError."""
    for shard in manifest["shards"]:
        if (problem := shard_problem(directory / shard["file"], shard["tokens"], shard_dtype(manifest))) is not None:
            raise NanoGPTError(f"{directory / shard['file']} {problem}; {fix}")


def _manifest_problem(manifest: Any) -> str | None:
    """What keeps `manifest` from being a manifest this package wrote, or None."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    for key, kind in (("tokens", int), ("shards", list), ("options", dict)):
        if key not in manifest:
            return f"it has no {key!r}"
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            return f"its {key!r} is of type {type(manifest[key]).__name__}, not {kind.__name__}"
    # Token ids only mean something in the vocabulary they were made with: a GPT-2 manifest (older ones name the
    # tokenizer as a string and may have no vocab_size) holds GPT-2's ids and end-of-text in uint16 shards.
    record = manifest.get("tokenizer", "gpt2")
    is_gpt2_record = record == "gpt2" or (isinstance(record, dict) and record.get("kind") == "gpt2")
    n_vocab = record.get("n_vocab", VOCAB_SIZE) if isinstance(record, dict) else manifest.get("vocab_size", VOCAB_SIZE)
    if is_gpt2_record and (n_vocab != VOCAB_SIZE or manifest.get("eot_token", EOT_TOKEN) != EOT_TOKEN
                           or manifest.get("dtype", "uint16") != "uint16"):
        made = ", ".join(f"{key} {manifest.get(key)!r}" for key in ("vocab_size", "eot_token", "dtype") if key in manifest)
        return f"it was made with another tokenizer ({made or n_vocab}), not GPT-2's ({VOCAB_SIZE} tokens, " \
               f"<|endoftext|> = {EOT_TOKEN}, uint16)"
    if not manifest["shards"]:
        return "it lists no shards"
    if manifest.get("dtype", "uint16") not in SHARD_DTYPES:
        return f"its dtype {manifest.get('dtype')!r} is not one of {', '.join(SHARD_DTYPES)}"
    record = manifest.get("tokenizer", "gpt2")
    if record != "gpt2" and not (isinstance(record, dict) and isinstance(record.get("n_vocab"), int)
                                 and record.get("kind") in ("gpt2", "char", "hf")):
        return "its tokenizer is not a tokenizer record"
    for i, shard in enumerate(manifest["shards"]):
        if not isinstance(shard, dict):
            return f"shards[{i}] is not an object"
        name, tokens, sha256 = shard.get("file"), shard.get("tokens"), shard.get("sha256")
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            return f"shards[{i}].file is not a file name"  # never a path that leaves the split's folder
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            return f"shards[{i}].tokens is not a positive integer"
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            return f"shards[{i}].sha256 is not 64 lowercase hex digits"
    if (total := sum(s["tokens"] for s in manifest["shards"])) != manifest["tokens"]:
        return f"its shards hold {total:,} tokens, not the {manifest['tokens']:,} it says"
    return None


def load_manifest(path: Path, fix: str) -> dict[str, Any]:
    """The manifest at `path`, checked to be one this package wrote; else one NanoGPTError ending in `fix`."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        reason = e.strerror if isinstance(e, OSError) else str(e) or type(e).__name__
        raise NanoGPTError(f"{path} cannot be read as JSON ({reason}); {fix}") from e
    if (problem := _manifest_problem(manifest)) is not None:
        raise NanoGPTError(f"{path} is not a valid manifest: {problem}; {fix}")
    return manifest


def _stamp(path: Path, sha256: str) -> list[int | str]:
    """What must be unchanged for an earlier verification of `path` to still hold.

    Any write changes mtime and ctime; a copy or a restored backup is a new inode with a new ctime (which
    no tool can set back), so a file replaced by other bytes of the same size is hashed again.
    """
    info = path.stat()
    return [sha256, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _scan(path: Path, dtype: np.dtype) -> tuple[str, int, int]:
    """(sha256, largest token id, index of its first occurrence) of a shard, in one read."""
    digest, top, where, offset = hashlib.sha256(), -1, 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(SCAN_BYTES):
            digest.update(chunk)
            tokens = np.frombuffer(chunk, dtype=dtype)
            if len(tokens) and (chunk_top := int(tokens.max())) > top:
                top, where = chunk_top, offset + int(tokens.argmax())
            offset += len(tokens)
    return digest.hexdigest(), top, where


def _read_verified(path: Path) -> dict[str, Any]:
    try:
        verified = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return verified if isinstance(verified, dict) else {}


def verify_shards(directory: Path, manifest: dict[str, Any], fix: str) -> None:
    """Sizes always; each shard's sha256 and token ids (< the tokenizer's vocabulary) once, remembered in
    `.verified.json`.

    A shard is hashed again only if its stamp (`_stamp`) or its expected hash changed, so a 10B-token
    dataset is read in full once, not at every start. Hold `split_lock` around this.
    """
    check_shard_sizes(directory, manifest, fix)
    marker = directory / VERIFIED
    verified = _read_verified(marker)
    stamps = {s["file"]: _stamp(directory / s["file"], s["sha256"]) for s in manifest["shards"]}
    unverified = [s for s in manifest["shards"] if verified.get(s["file"]) != stamps[s["file"]]]
    if unverified:
        logger.info("verifying %d shard%s of %s (sha256 and token ids; once, remembered in %s)", len(unverified),
                    "s" * (len(unverified) != 1), directory, VERIFIED)
    record = manifest_tokenizer(manifest)
    for shard in unverified:
        path = directory / shard["file"]
        sha256, top, where = _scan(path, shard_dtype(manifest))
        if sha256 != shard["sha256"]:
            raise NanoGPTError(f"{path} has sha256 {sha256}, not the {shard['sha256']} of {directory / MANIFEST} "
                               f"(the file changed after it was prepared); {fix}")
        if top >= record["n_vocab"]:
            raise NanoGPTError(f"{path} holds token id {top} at token {where:,}, outside the vocabulary of "
                               f"{describe_tokenizer(record)}; {fix}")
    if unverified or set(verified) != set(stamps):
        try:
            write_json_atomic(marker, stamps)
        except NanoGPTError as e:  # a read-only dataset is still usable; it is only hashed at every start
            logger.warning("cannot record the verification (%s); the shards will be hashed again next time", e)


def verify_split(dataset_dir: Path, dataset: str, split: str, tokenizer: str = "gpt2") -> dict[str, Any]:
    """The manifest of a prepared split once what it promises is checked; else one NanoGPTError line that
    names the file and the `prepare_dataset` command that rebuilds it.

    Checks the manifest's form and every shard's size at every call, and each shard's sha256 and token
    ids the first time (see `verify_shards`). Processes that verify at once (DDP ranks) take turns under
    the split's lock, so the others find the work done.
    """
    directory = split_dir(dataset_dir, dataset, split, tokenizer)
    command = prepare_command(dataset, split, dataset_dir, tokenizer)
    if not (directory / MANIFEST).exists():
        state = "was not finished" if (directory / PROGRESS).exists() else "is not prepared"
        raise NanoGPTError(f"the {split} split of dataset {dataset!r} {state} in {directory}; run `{command}`")
    fix = f"prepare the split again: `{command} --force`"
    with ExitStack() as stack:
        try:
            stack.enter_context(split_lock(directory))
        except OSError as e:  # a read-only dataset dir: verify without the lock
            logger.debug("cannot take the lock of %s (%s); verifying without it", directory, e)
        manifest = load_manifest(directory / MANIFEST, fix)
        verify_shards(directory, manifest, fix)
    return manifest



def is_prepared(dataset_dir: Path, dataset: str, split: str, tokenizer: str = "gpt2") -> bool:
    """Whether `split` has a manifest (finished; its contents are checked by `verify_split`)."""
    return (split_dir(dataset_dir, dataset, split, tokenizer) / MANIFEST).exists()


def split_tokenizers(dataset_dir: Path, dataset: str, splits: list[str], tokenizer: str = "gpt2") -> dict[str, Any]:
    """The one tokenizer record of the prepared `splits` (each verified); splits of two tokenizers are refused
    in one line: a model cannot be trained on one and measured on the other."""
    from nano_gpt.tokenizer import same_tokenizer

    records = {split: manifest_tokenizer(verify_split(dataset_dir, dataset, split, tokenizer)) for split in splits}
    first, *others = splits
    for other in others:
        if not same_tokenizer(records[first], records[other]):
            raise NanoGPTError(f"the {first} split of {dataset!r} is tokenized by {describe_tokenizer(records[first])} "
                               f"but its {other} split by {describe_tokenizer(records[other])}; prepare both again "
                               f"with one tokenizer: `{prepare_command(dataset, ','.join(splits), dataset_dir, tokenizer)} "
                               "--force`")
    return records[first]
