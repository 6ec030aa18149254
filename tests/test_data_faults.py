"""Hostile input and faults in the data path: each is one error line naming the file and the fix, nothing on
disk is lost, a corrupt split stops a reader before its first batch, and two prepare runs on one split
end as one clean run."""

import contextlib
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from typer.testing import CliRunner

from conftest import assert_one_line_error, files_under, run_cli
from data_corpus import documents, write_jsonl
from nano_gpt.cli import app
from nano_gpt.cli.prepare_dataset import prepare_dataset as prepare_command_function
from nano_gpt.data import ShardLoader, prepare, prepare_dataset, shards
from nano_gpt.data.shards import MANIFEST, VERIFIED, prepare_command, split_dir
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import os_error_message
from nano_gpt.tokenizer import get_tokenizer

TOKENS_PER_SHARD = 400


def prepared(tmp_path: Path) -> tuple[Path, str]:
    """(dataset dir, dataset) of a small corpus prepared into several train shards."""
    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", documents(60, seed=11)))
    result = prepare_dataset(corpus, dataset_dir=tmp_path / "ds", tokens_per_shard=TOKENS_PER_SHARD,
                             validation_tokens=TOKENS_PER_SHARD, num_workers=1)
    assert len(result["train"].manifest["shards"]) >= 3
    return tmp_path / "ds", corpus


def reader_error(dataset_dir: Path, dataset: str) -> str:
    """The one-line message with which a reader of the train split (train, eval) refuses it."""
    with pytest.raises(NanoGPTError) as error:
        ShardLoader(dataset_dir, dataset, "train", 1, 8)
    assert "\n" not in str(error.value)
    return str(error.value)


def rebuild(dataset_dir: Path, dataset: str) -> str:
    return f"`{prepare_command(dataset, 'train', dataset_dir)} --force`"


def edit_manifest(path: Path, edit: Callable[[dict], object]) -> None:
    manifest = json.loads(path.read_text())
    result = edit(manifest)
    path.write_text(json.dumps(manifest if result is None else result))


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda manifest: manifest.__setitem__(key, value)


def _set_shard(key: str, value: object) -> Callable[[dict], None]:
    return lambda manifest: manifest["shards"][0].__setitem__(key, value)


@pytest.mark.parametrize(("corrupt", "fragment"), [
    (lambda p: p.write_text('{"dataset": '), "cannot be read as JSON"),
    (lambda p: p.write_bytes(b'{"dataset": "caf\xe9"}'), "cannot be read as JSON"),
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "cannot be read as JSON"),
    (lambda p: (p.unlink(), p.mkdir()), "cannot be read as JSON (Is a directory)"),
    (lambda p: edit_manifest(p, lambda m: m["shards"]), "holds a JSON list, not an object"),
    (lambda p: edit_manifest(p, lambda m: m.pop("shards") and None), "it has no 'shards'"),
    (lambda p: edit_manifest(p, _set("tokens", "12")), "its 'tokens' is of type str, not int"),
    (lambda p: edit_manifest(p, _set("options", None)), "its 'options' is of type NoneType, not dict"),
    (lambda p: edit_manifest(p, _set("shards", [])), "it lists no shards"),
    (lambda p: edit_manifest(p, _set_shard("file", "../validation/shard_000000.bin")), "shards[0].file is not a file name"),
    (lambda p: edit_manifest(p, _set_shard("tokens", True)), "shards[0].tokens is not a positive integer"),
    (lambda p: edit_manifest(p, _set_shard("sha256", "abc")), "shards[0].sha256 is not 64 lowercase hex digits"),
    (lambda p: edit_manifest(p, lambda m: m.__setitem__("tokens", m["tokens"] + 1)), "its shards hold"),
], ids=["truncated-json", "not-utf8", "nested-100000-deep", "a-folder", "a-list", "no-shards", "tokens-a-string",
        "options-null", "empty-shards", "file-outside-the-split", "tokens-a-bool", "sha256-not-hex", "totals-disagree"])
def test_a_bad_manifest_is_one_line_naming_it_and_the_rebuild_command(tmp_path: Path, corrupt: Callable[[Path], object],
                                                                      fragment: str) -> None:
    dataset_dir, corpus = prepared(tmp_path)
    manifest = split_dir(dataset_dir, corpus, "train") / MANIFEST
    corrupt(manifest)
    message = reader_error(dataset_dir, corpus)
    assert str(manifest) in message and fragment in message and message.endswith(rebuild(dataset_dir, corpus))


def _flip_one_token(path: Path) -> None:
    tokens = np.fromfile(path, dtype="<u2")
    tokens[7] = 1 if tokens[7] != 1 else 2
    tokens.tofile(path)


def _out_of_vocabulary(path: Path) -> None:
    """Token 5 becomes 65535, and the manifest's sha256 is made to match, as a careless repair would."""
    tokens = np.fromfile(path, dtype="<u2")
    tokens[5] = 65535
    tokens.tofile(path)
    edit_manifest(path.parent / MANIFEST, _set_shard("sha256", hashlib.sha256(tokens.tobytes()).hexdigest()))


@pytest.mark.parametrize(("corrupt", "fragment"), [
    (lambda p: p.unlink(), "is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), "is truncated: 798 bytes where the manifest says 800"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"), "is too long"),
    (lambda p: (p.unlink(), p.mkdir()), "is not a file"),
    (_flip_one_token, "(the file changed after it was prepared)"),
    (_out_of_vocabulary, "holds token id 65535 at token 5, outside the vocabulary of GPT-2's BPE tokenizer (50,257 tokens)"),
], ids=["missing", "truncated", "too-long", "a-folder", "other-bytes-same-size", "token-ids-out-of-vocabulary"])
def test_a_bad_shard_stops_the_reader_with_one_line_naming_it_and_the_rebuild_command(
        tmp_path: Path, corrupt: Callable[[Path], object], fragment: str) -> None:
    dataset_dir, corpus = prepared(tmp_path)
    shard = split_dir(dataset_dir, corpus, "train") / "shard_000000.bin"
    corrupt(shard)
    message = reader_error(dataset_dir, corpus)
    assert message.startswith(str(shard)) and fragment in message and message.endswith(rebuild(dataset_dir, corpus))


def test_shards_are_hashed_once_and_again_only_when_they_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset_dir, corpus = prepared(tmp_path)
    directory = split_dir(dataset_dir, corpus, "train")
    scanned: list[str] = []
    scan = shards._scan
    monkeypatch.setattr(shards, "_scan", lambda path, *rest: scanned.append(path.name) or scan(path, *rest))
    count = len(list(directory.glob("shard_*.bin")))
    ShardLoader(dataset_dir, corpus, "train", 1, 8)
    assert len(scanned) == count and (directory / VERIFIED).is_file()
    ShardLoader(dataset_dir, corpus, "train", 1, 8)
    assert len(scanned) == count  # remembered: not hashed at every start

    # Other bytes of the same size with the old mtime put back: the ctime still gives the change away.
    shard = directory / "shard_000001.bin"
    before = shard.stat()
    _flip_one_token(shard)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert "shard_000001.bin has sha256" in reader_error(dataset_dir, corpus)
    assert scanned[count:] == ["shard_000001.bin"]


def test_a_split_whose_verification_cannot_be_recorded_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    dataset_dir, corpus = prepared(tmp_path)

    def read_only(path: Path, obj: object) -> None:
        raise NanoGPTError(os_error_message(PermissionError(13, "Permission denied", str(path)), path))

    monkeypatch.setattr(shards, "write_json_atomic", read_only)
    loader = ShardLoader(dataset_dir, corpus, "train", 1, 8)
    assert loader.next_batch()[0].shape == (1, 8)
    assert "cannot record the verification" in caplog.text and "Permission denied" in caplog.text


def test_eval_refuses_a_corrupt_split_before_scoring_anything(tmp_path: Path, tiny_hf_gpt2_vocab_dir: Path) -> None:
    dataset_dir, corpus = prepared(tmp_path)
    shard = split_dir(dataset_dir, corpus, "validation") / "shard_000000.bin"
    _flip_one_token(shard)
    result = run_cli("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--dataset={corpus}",
                     f"--dataset-dir={dataset_dir}", "--hellaswag-samples=0", "--device=cpu", "--sequence-length=16")
    assert_one_line_error(result, str(shard), "has sha256", "--splits=validation", "--force")
    assert "val_loss" not in result.stdout


def _write(name: str, content: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_bytes(content)
        return folder / name

    return write


def _parquet_of_numbers(folder: Path) -> Path:
    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "corpus.parquet")
    return folder / "corpus.parquet"


def _hub_layout_of_numbers(folder: Path) -> str:
    (folder / "hub").mkdir()
    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "hub" / "train.parquet")
    return f"hf:{folder / 'hub'}"


BAD_INPUTS = {
    "jsonl-text-a-number": (_write("corpus.jsonl", b'{"text": "fine"}\n{"text": 42}\n'), ["corpus.jsonl:2: 'text' is a number, not a string"]),
    "jsonl-text-a-list": (_write("corpus.jsonl", b'{"text": ["a", "b"]}\n'), ["corpus.jsonl:1: 'text' is a list"]),
    "jsonl-text-null": (_write("corpus.jsonl", b'{"text": "fine"}\n\n{"text": null}\n'), ["corpus.jsonl:3: 'text' is null"]),
    "jsonl-text-an-object": (_write("corpus.jsonl", b'{"text": {"body": "x"}}\n'), ["corpus.jsonl:1: 'text' is an object"]),
    "jsonl-text-a-bool": (_write("corpus.jsonl", b'{"text": true}\n'), ["corpus.jsonl:1: 'text' is true or false"]),
    "jsonl-not-utf8": (_write("corpus.jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n'), ["corpus.jsonl:2 is not UTF-8 text", "byte 13 of the line"]),
    "jsonl-line-a-list": (_write("corpus.jsonl", b'[1, 2]\n'), ["corpus.jsonl:1 is not a JSON object with a 'text' string"]),
    "jsonl-nested-100000-deep": (_write("corpus.jsonl", b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"), ["corpus.jsonl:1 is not a JSON object"]),
    "txt-not-utf8": (_write("corpus.txt", b"fine \xff\xfe text"), ["corpus.txt is not UTF-8 text", "byte 5"]),
    "parquet-garbage": (_write("corpus.parquet", b"PAR1 this is not parquet at all"), ["corpus.parquet is not a parquet file"]),
    "parquet-text-of-numbers": (_parquet_of_numbers, ["corpus.parquet: column 'text' holds int64, not strings"]),
    "hf-text-of-numbers": (_hub_layout_of_numbers, ["hub': 'text' is a number, not a string"]),
}


@pytest.mark.parametrize(("make", "fragments"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_line_naming_the_file_and_writes_no_manifest(tmp_path: Path,
                                                                      make: Callable[[Path], Path | str],
                                                                      fragments: list[str]) -> None:
    corpus = make(tmp_path)
    with pytest.raises(NanoGPTError) as error:
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=0, splits=["train"], num_workers=1)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)
    assert all(fragment in str(error.value) for fragment in fragments), str(error.value)
    assert not list((tmp_path / "ds").rglob(MANIFEST))


def test_lone_surrogates_in_json_tokenize_as_encode_ordinary_does(tmp_path: Path) -> None:
    texts = ["broken \ud800 pair", "fine", "\udfff at the start"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))  # JSON escapes them: valid ASCII
    result = prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "ds", validation_tokens=0, num_workers=2)
    tokens = np.fromfile(result["train"].directory / "shard_000000.bin", dtype="<u2").tolist()
    enc = get_tokenizer()
    assert tokens == [t for text in texts for t in [50256, *enc.encode_ordinary(text)]]


def test_an_error_inside_a_tokenizer_worker_reaches_the_user_as_one_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str) -> np.ndarray:
        raise ValueError("the tokenizer broke")

    monkeypatch.setattr(prepare, "_encode_ordinary", broken)  # forked workers inherit it
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    with pytest.raises(NanoGPTError) as error:
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", num_workers=2, start_method="fork")
    assert "\n" not in str(error.value)
    assert "tokenizing document 0 (counting from 0) failed: ValueError: the tokenizer broke" in str(error.value)


def test_a_tokenizer_worker_that_dies_is_an_error_not_a_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "_encode_ordinary", lambda text: os._exit(9))  # as the out-of-memory killer would
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    with pytest.raises(NanoGPTError, match="a tokenizer process died .*fewer --num-workers"):
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=10, num_workers=2,
                        start_method="fork")


def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("keep me")
    return tmp_path / "a-file" / "ds"


def _is_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("keep me")
    return tmp_path / "a-file"


def _in_split(relative: str, folder: bool) -> Callable[[Path], Path]:
    """A dataset dir where the train split's `relative` path is taken by a folder (or a file)."""
    def make(tmp_path: Path) -> Path:
        path = split_dir(tmp_path / "ds", str(tmp_path / "corpus.jsonl"), "train") / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            path.mkdir()
            (path / "keep.txt").write_text("keep me")
        else:
            path.write_text("keep me")
        return tmp_path / "ds"

    return make


FILE_SYSTEM_FAULTS = {
    "dataset-dir-under-a-file": (_under_a_file, "Not a directory"),
    "dataset-dir-is-a-file": (_is_a_file, "Not a directory"),
    "split-folder-is-a-file": (_in_split(".", folder=False), "File exists"),
    "manifest-is-a-folder": (_in_split(MANIFEST, folder=True), "manifest.json cannot be read as JSON (Is a directory)"),
    "progress-is-a-folder": (_in_split("progress.jsonl", folder=True), "Is a directory"),
    "shard-is-a-folder": (_in_split("shard_000000.bin", folder=True), "shard_000000.bin"),
}


@pytest.mark.parametrize(("make", "fragment"), FILE_SYSTEM_FAULTS.values(), ids=FILE_SYSTEM_FAULTS.keys())
def test_file_system_faults_are_one_line_and_keep_what_was_there(tmp_path: Path, make: Callable[[Path], Path],
                                                                  fragment: str) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    dataset_dir = make(tmp_path)
    kept = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.name in ("a-file", "keep.txt")}
    with pytest.raises(NanoGPTError) as error:
        prepare_dataset(str(corpus), dataset_dir=dataset_dir, tokens_per_shard=100, validation_tokens=100,
                        num_workers=1)
    assert "\n" not in str(error.value) and fragment in str(error.value), str(error.value)
    assert {path: path.read_bytes() for path in kept} == kept


def test_a_full_disk_mid_split_is_one_line_and_the_next_run_goes_on_from_the_whole_shards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    options = dict(tokens_per_shard=100, validation_tokens=100, num_workers=1, splits=["train"])
    clean = prepare_dataset(str(corpus), dataset_dir=tmp_path / "clean", **options)["train"].manifest
    assert len(clean["shards"]) >= 3
    fsync = os.fsync

    def full_at_the_second_shard(fd: int) -> None:
        if ".shard_000001.bin." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full_at_the_second_shard)
    with pytest.raises(NanoGPTError) as error:
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", **options)
    message = str(error.value)
    assert "\n" not in message and "No space left" in message and "free there" in message and "goes on" in message
    train = split_dir(tmp_path / "ds", str(corpus), "train")
    assert sorted(os.listdir(train)) == ["progress.jsonl", "shard_000000.bin"]  # no temp, no record of one
    with open(train / "progress.jsonl", "ab") as f:
        f.write(b'{"file": "\xff\xfe')  # and a line half-written, in bytes that are not UTF-8
    monkeypatch.setattr(os, "fsync", fsync)
    assert prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", **options)["train"].manifest["shards"] == \
        clean["shards"]


def test_an_unwritable_dataset_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    monkeypatch.setattr(Path, "mkdir", denied)  # as a read-only folder answers (tests may run as root)
    with pytest.raises(NanoGPTError, match=r"cannot prepare the train split in .*: Permission denied: .*ds"):
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=100, num_workers=1)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_dataset_dir_is_one_line(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    (tmp_path / "ds").mkdir(mode=0o555)
    try:
        assert_one_line_error(run_cli("prepare_dataset", f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}"),
                              "Permission denied")
    finally:
        (tmp_path / "ds").chmod(0o755)


def test_cli_errors_are_one_line_for_bad_input_and_paths(tmp_path: Path) -> None:
    """The same faults through real processes: in a worker pool, the main process and the file system."""
    numbers = BAD_INPUTS["jsonl-text-a-number"][0](tmp_path)
    assert_one_line_error(run_cli("prepare_dataset", f"--dataset={numbers}", "--num-workers=2", cwd=tmp_path),
                          "corpus.jsonl:2: 'text' is a number")
    (tmp_path / "a-file").write_text("keep me")
    assert_one_line_error(run_cli("prepare_dataset", f"--dataset={numbers}", "--dataset-dir=a-file/ds", cwd=tmp_path),
                          "Not a directory")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(run_cli("prepare_dataset", f"--dataset={empty}", cwd=tmp_path), "the corpus is empty")
    assert (tmp_path / "a-file").read_text() == "keep me"


def test_a_shard_deleted_during_a_run_is_never_named_by_a_manifest(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", documents(60, seed=11)))
    options = dict(tokens_per_shard=TOKENS_PER_SHARD, validation_tokens=TOKENS_PER_SHARD, num_workers=1)
    prepare_dataset(corpus, dataset_dir=tmp_path / "reference", **options)
    close_shard = prepare._ShardWriter.close_shard

    def close_and_lose_the_first(self: prepare._ShardWriter, resume: tuple[int, int, int]) -> None:
        close_shard(self, resume)
        if len(self.log.records) == 3:
            (self.directory / "shard_000000.bin").unlink()  # a cleaner, a user's rm

    with monkeypatch.context() as patch:
        patch.setattr(prepare._ShardWriter, "close_shard", close_and_lose_the_first)
        with pytest.raises(NanoGPTError, match=r"shard_000000.bin is missing; something changed it .* run the same"):
            prepare_dataset(corpus, ["train"], dataset_dir=tmp_path / "ds", **options)
    train = split_dir(tmp_path / "ds", corpus, "train")
    assert not (train / MANIFEST).exists()
    prepare_dataset(corpus, dataset_dir=tmp_path / "ds", **options)  # the same command again repairs it
    assert files_under(tmp_path / "ds") == files_under(tmp_path / "reference")


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


@pytest.mark.parametrize("second_tokens_per_shard", [300, 500], ids=["same-options", "other-tokens-per-shard"])
def test_two_runs_on_one_split_at_once_end_as_one_clean_run(tmp_path: Path, second_tokens_per_shard: int) -> None:
    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", documents(2000, seed=12)))
    prepare_dataset(corpus, dataset_dir=tmp_path / "reference", tokens_per_shard=300, validation_tokens=600,
                    num_workers=1)

    def start(tokens_per_shard: int, log: Path) -> subprocess.Popen:
        args = ["prepare_dataset", f"--dataset={corpus}", f"--tokens-per-shard={tokens_per_shard}",
                "--validation-tokens=600", "--num-workers=2", f"--dataset-dir={tmp_path / 'ds'}"]
        return subprocess.Popen([sys.executable, "-m", "nano_gpt", *args], stdout=subprocess.DEVNULL,
                                stderr=open(log, "w"), start_new_session=True)

    train = split_dir(tmp_path / "ds", corpus, "train")  # the first split either run prepares
    first, second = start(300, tmp_path / "first.log"), None
    try:
        _wait_for(lambda: (train / "progress.jsonl").exists() or first.poll() is not None, "the first run")
        os.killpg(first.pid, signal.SIGSTOP)  # it holds the lock, mid-split, until the second run is waiting
        assert first.poll() is None and not (train / MANIFEST).exists()
        second = start(second_tokens_per_shard, tmp_path / "second.log")
        try:
            _wait_for(lambda: "waiting for another process" in (tmp_path / "second.log").read_text(),
                      "the second run to wait")
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()
        second.wait(timeout=120)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    log = (tmp_path / "second.log").read_text()
    if second_tokens_per_shard == 300:
        assert second.returncode == 0 and log.count("already prepared") == 2, log
    else:
        lines = [line for line in log.splitlines() if line.startswith("error:")]
        assert second.returncode == 1 and len(lines) == 1 and "Traceback" not in log, log
        assert "--tokens-per-shard=300 --validation-tokens=600, not --text-column=text --tokens-per-shard=500" in lines[0]
    assert files_under(tmp_path / "ds") == files_under(tmp_path / "reference")
    assert (train.parent / ".train.lock").exists()


def test_num_procs_is_a_hidden_alias_of_num_workers(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(20))
    result = run_cli("prepare_dataset", f"--dataset={corpus}", "--num-procs=1", "--validation-tokens=50",
                     "--dataset-dir=ds", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "validation: 50 tokens in 1 shard" in result.stdout
    help_text = CliRunner().invoke(app, ["prepare_dataset", "--help"]).output
    assert "--num-workers" in help_text and "--num-procs" not in help_text
    with pytest.raises(NanoGPTError, match="--num-procs=1 and --num-workers=2 disagree"):
        prepare_command_function(dataset=str(corpus), dataset_dir=tmp_path / "ds", num_workers=2, num_procs=1)


def _children(pid: int) -> list[int]:
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
            if _read(stat) and int(_read(stat).rsplit(")", 1)[1].split()[1]) == pid]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    stat = _read(Path(f"/proc/{pid}/stat"))
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_tokenizer_workers_leave_when_their_parent_is_killed(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(3000, seed=13, words=300))
    process = subprocess.Popen([sys.executable, "-m", "nano_gpt", "prepare_dataset", f"--dataset={corpus}",
                                "--tokens-per-shard=1000", "--num-workers=2", f"--dataset-dir={tmp_path / 'ds'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        train = split_dir(tmp_path / "ds", str(corpus), "train")
        _wait_for(lambda: (train / "progress.jsonl").exists() and len(_children(process.pid)) >= 2, "the workers")
        workers = _children(process.pid)
        process.kill()  # the parent alone, as the out-of-memory killer does
        process.wait()
        _wait_for(lambda: not any(_alive(pid) for pid in workers), "the orphaned workers to exit", timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
