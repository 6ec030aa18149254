"""Damage on disk is noticed: a flipped bit, a sharded folder without its index or emptied, is one `error:` line
naming the file, `--resume=auto` never steps back to an older checkpoint silently, and nothing on disk changes."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, files_under, run_cli_here as cli
from data_corpus import documents
from nano_gpt.checkpoint import load_model, read_checkpoint
from nano_gpt.checkpoint.sharded import save_sharded
from nano_gpt.data.prepare import prepare_dataset
from nano_gpt.errors import NanoGPTError
from nano_gpt.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished three-step run with checkpoints after steps 1 and 2, and its dataset."""
    root = tmp_path_factory.mktemp("damage")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(documents(200, words=40)))
    prepare_dataset(str(corpus), dataset_dir=root / "data", num_workers=1)
    args = ["--model=gpt2-xxs", f"--dataset={corpus}", f"--dataset-dir={root / 'data'}", "--device=cpu",
            "--dtype=fp32", "--no-compile", "--sequence-length=32", "--micro-batch-size=2", "--total-batch-size=64",
            "--max-steps=4", "--warmup-steps=0", "--max-lr=1e-3", "--validation-steps=0", "--hellaswag-samples=0",
            "--checkpoint-steps=1"]
    train(TrainConfig(model="gpt2-xxs", dataset=str(corpus), dataset_dir=str(root / "data"), device="cpu",
                      dtype="fp32", compile=False, sequence_length=32, micro_batch_size=2, total_batch_size=64,
                      max_steps=4, warmup_steps=0, max_lr=1e-3, validation_steps=0, hellaswag_samples=0,
                      checkpoint_steps=1, stop_at_step=2, checkpoint_dir=str(root / "run")))
    return {"root": root, "folder": root / "run", "args": args}


def _copy_run(run: dict, tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    shutil.copytree(run["folder"], folder)
    return folder


def _flip_tensor_byte(checkpoint: Path) -> None:
    """Flip one bit in the middle of the largest tensor's bytes, as a failing disk would."""
    with zipfile.ZipFile(checkpoint) as archive:
        record = max((r for r in archive.infolist() if "/data/" in r.filename), key=lambda r: r.file_size)
    data = bytearray(checkpoint.read_bytes())
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    data[start + record.file_size // 2] ^= 0x04
    checkpoint.write_bytes(bytes(data))


def _shard(folder: Path, state_file: Path) -> Path:
    """The state of `state_file` written again as a sharded folder, as an FSDP run writes it."""
    save_sharded(folder, torch.load(state_file, weights_only=True))
    return folder


def _resume(run: dict, folder: Path) -> object:
    return cli("train", *run["args"], f"--checkpoint-dir={folder}", "--resume=auto", "--stop-at-step=3")


def test_a_flipped_bit_in_a_checkpoint_file_is_one_error_naming_it(run: dict, tmp_path: Path) -> None:
    checkpoint = shutil.copy(run["folder"] / "checkpoint_000002.bin", tmp_path / "checkpoint_000002.bin")
    _flip_tensor_byte(checkpoint)
    before = files_under(tmp_path)
    result = cli("sample", f"--checkpoint={checkpoint}", "--device=cpu", "--max-length=12", "Hello")
    assert_one_line_error(result, str(checkpoint), "damaged", "CRC-32")
    assert result.returncode == 1
    assert files_under(tmp_path) == before


def test_resume_auto_stops_at_a_damaged_newest_file_and_names_the_older_one(run: dict, tmp_path: Path) -> None:
    folder = _copy_run(run, tmp_path)
    _flip_tensor_byte(folder / "checkpoint_000002.bin")
    before = files_under(folder)
    result = _resume(run, folder)
    assert_one_line_error(result, "checkpoint_000002.bin", "damaged", f"--resume={folder / 'checkpoint_000001.bin'}")
    assert result.returncode == 1
    assert files_under(folder) == before  # no resume from the older one, no new checkpoint, the log untouched


@pytest.mark.parametrize("damage", ["flipped bit in a shard", "index removed", "emptied"])
def test_resume_auto_stops_at_a_damaged_newest_sharded_folder(run: dict, tmp_path: Path, damage: str) -> None:
    folder = _copy_run(run, tmp_path)
    sharded = _shard(folder / "checkpoint_000003", folder / "checkpoint_000002.bin")
    if damage == "flipped bit in a shard":
        [shard] = sharded.glob("*.distcp")
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x04
        shard.write_bytes(bytes(data))
        expected = [shard.name, "CRC-32"]
    elif damage == "index removed":
        (sharded / ".metadata").unlink()
        expected = ["missing its index"]
    else:
        for file in sharded.iterdir():
            file.unlink()
        expected = ["is empty"]
    before = files_under(folder)
    result = _resume(run, folder)
    assert_one_line_error(result, str(sharded), "damaged", *expected, f"--resume={folder / 'checkpoint_000002.bin'}")
    assert result.returncode == 1
    assert files_under(folder) == before and sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
        == sorted(["checkpoint_000001.bin", "checkpoint_000002.bin", "checkpoint_000003", "train_log.jsonl"])  # and the run's locks


def test_a_damaged_shard_is_blamed_on_its_file_not_on_the_model(run: dict, tmp_path: Path) -> None:
    sharded = _shard(tmp_path / "checkpoint_000002", run["folder"] / "checkpoint_000002.bin")
    shard = max(sharded.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x80
    shard.write_bytes(bytes(data))
    result = cli("sample", f"--checkpoint={sharded}", "--device=cpu", "--max-length=12", "Hello")
    assert_one_line_error(result, str(sharded), shard.name, "damaged")
    assert "lm_head" not in result.stderr


def test_checkpoints_from_before_checksums_still_load(run: dict, tmp_path: Path) -> None:
    """A file saved with torch's CRCs turned off, and a sharded folder without checksums.json."""
    state = torch.load(run["folder"] / "checkpoint_000002.bin", weights_only=True)
    reference = load_model(run["folder"] / "checkpoint_000002.bin").state_dict()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, tmp_path / "old.bin")
    finally:
        torch.serialization.set_crc32_options(True)
    sharded = _shard(tmp_path / "checkpoint_000002", run["folder"] / "checkpoint_000002.bin")
    (sharded / "checksums.json").unlink()
    for source in (tmp_path / "old.bin", sharded):
        loaded = read_checkpoint(source)
        assert loaded.step == 2
        assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in reference.items())


def test_a_sharded_folder_carries_a_checksum_of_every_file(run: dict, tmp_path: Path) -> None:
    sharded = _shard(tmp_path / "checkpoint_000002", run["folder"] / "checkpoint_000002.bin")
    recorded = json.loads((sharded / "checksums.json").read_text())
    assert set(recorded) == {p.name for p in sharded.iterdir()} - {"checksums.json"}
    (sharded / ".metadata").write_bytes((sharded / ".metadata").read_bytes() + b"\0")
    with pytest.raises(NanoGPTError, match=r"\.metadata \(fails its CRC-32 check\)"):
        read_checkpoint(sharded)
