"""prepare_dataset killed with SIGKILL mid-run, then run again, ends exactly as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import files_under, run_cli
from data_corpus import documents, write_jsonl
from nano_gpt.data import dataset_slug, prepare_dataset
from nano_gpt.data.shards import PROGRESS


def run_until_shards_then_kill(args: list[str], shard_dir: Path, shards: int) -> None:
    """Start `nano-gpt ARGS` and SIGKILL it (and its tokenizer pool) once `shard_dir` holds `shards` shards."""
    process = subprocess.Popen([sys.executable, "-m", "nano_gpt", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(shard_dir.glob("shard_*.bin"))) < shards:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the parent and its pool workers
        process.wait()


def test_a_run_killed_twice_then_rerun_ends_with_the_same_shards_and_manifest(tmp_path: Path) -> None:
    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", documents(2500, seed=9)))
    options = dict(tokens_per_shard=300, validation_tokens=1000)
    reference = prepare_dataset(corpus, dataset_dir=tmp_path / "reference", num_workers=1, **options)
    total_shards = len(reference["train"].manifest["shards"])
    assert total_shards > 200

    args = ["prepare_dataset", f"--dataset={corpus}", "--tokens-per-shard=300", "--validation-tokens=1000",
            "--num-workers=2", f"--dataset-dir={tmp_path / 'killed'}"]
    train_dir = tmp_path / "killed" / dataset_slug(corpus) / "train"
    for shards in (5, total_shards // 2):  # once early, once in the resumed run
        run_until_shards_then_kill(args, train_dir, shards)
        assert (train_dir / PROGRESS).exists() and not (train_dir / "manifest.json").exists()

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "resuming after" in result.stdout + result.stderr
    assert files_under(tmp_path / "killed") == files_under(tmp_path / "reference")
