"""A newcomer's first run is one command: `train` on a dataset nobody prepared prepares it first, with
`prepare_dataset`'s own code and locks; `--no-prepare` restores the refusal; offline, the message names the
file to place."""

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import assert_one_line_error, files_under, run_cli_here
from nano_gpt.cache import cached_path
from nano_gpt.data import prepare_dataset
from nano_gpt.data.sources import TINYSHAKESPEARE_CACHED

TEXT = "".join(f"ROMEO:\nBut soft, what light through yonder window breaks? {i}\n\n" for i in range(200))
TINY_RUN = ["train", "--model=baby", "--tokenizer=char", "--n-layer=1", "--n-embd=16", "--n-head=2", "--block-size=16",
            "--micro-batch-size=2", "--total-batch-size=32", "--max-steps=2", "--warmup-steps=1", "--eval-steps=100",
            "--validation-steps=1", "--device=cpu", "--dtype=fp32", "--no-compile"]


def _corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _shards(dataset_dir: Path) -> dict[str, bytes]:
    """The prepared files (shards and manifests), without the verification marker that reading adds."""
    return {name: data for name, data in files_under(dataset_dir).items() if not name.endswith(".verified.json")
            and not name.split("/")[-1].startswith(".")}


def test_an_unprepared_corpus_trains_in_one_command_into_the_shards_prepare_dataset_writes(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    result = run_cli_here(*TINY_RUN, f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}",
                          f"--checkpoint-dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "is not prepared with --tokenizer=char: preparing its train and validation splits in" in result.stderr
    assert (tmp_path / "run" / "checkpoint_000001.bin").is_file()
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "reference", tokenizer="char", num_workers=1)
    assert _shards(tmp_path / "ds") == _shards(tmp_path / "reference") and _shards(tmp_path / "ds")


def test_two_processes_racing_to_prepare_one_split_end_with_one_clean_result(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    # What every torchrun rank runs before its first step (nano_gpt.train.loop), in two processes at once.
    code = ("import sys; from pathlib import Path; from nano_gpt.data.prepare import prepare_missing; "
            "prepare_missing(sys.argv[1], ['train', 'validation'], Path(sys.argv[2]), 'char')")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    racers = [subprocess.Popen([sys.executable, "-c", code, str(corpus), str(tmp_path / "ds")], env=env,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [racer.communicate(timeout=120)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], logs
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "reference", tokenizer="char", num_workers=1)
    assert _shards(tmp_path / "ds") == _shards(tmp_path / "reference")
    leftovers = [p.name for p in (tmp_path / "ds").rglob("*") if p.name.endswith(".tmp") or p.name == "progress.jsonl"]
    assert leftovers == []


def test_no_prepare_refuses_an_unprepared_dataset_in_one_line_naming_the_command(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    result = run_cli_here(*TINY_RUN, f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}",
                          f"--checkpoint-dir={tmp_path / 'run'}", "--no-prepare")
    assert_one_line_error(result, "is not prepared in", "run `nano-gpt prepare_dataset", "--tokenizer=char")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "run").exists()


def test_offline_with_no_corpus_the_message_names_the_file_to_place(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path / "cache"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    result = run_cli_here(*TINY_RUN, "--dataset=tinyshakespeare", f"--dataset-dir={tmp_path / 'ds'}",
                          f"--checkpoint-dir={tmp_path / 'run'}")
    assert_one_line_error(result, "cannot download", f"place it at {cached_path(TINYSHAKESPEARE_CACHED)}")
    assert str(tmp_path / "cache") in str(cached_path(TINYSHAKESPEARE_CACHED))
    assert not list((tmp_path / "ds").rglob("manifest.json")) if (tmp_path / "ds").exists() else True
