"""FSDP under torchrun (CPU, gloo, tiny model): the same training as DDP and as one process, sharded checkpoints
that survive SIGKILL, resume exactly, reshard to one process, and export.

Each torchrun launch costs 15-30 s here, so one FSDP run is killed and resumed, and its checkpoints serve the
other tests. Tolerance, where processes differ: 1e-5 on losses. The ranks' gradients are summed by gloo in
another order than one process accumulates them, and FSDP adds the shards' squared norms for clipping in
another order again; that fp32 rounding (~1e-7 relative) is amplified by Adam's normalisation on near-zero
gradients over six steps, staying far below what a step changes (the loss falls by ~0.1 per step).
"""

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from nano_gpt.checkpoint import latest_checkpoint, load_model, read_checkpoint
from nano_gpt.train import TrainConfig, train
from test_train import _cli_args, _config

# Two ranks x micro batch 2 x 2 micro-steps = 256 tokens per step; one process takes 4 micro-steps.
SHARDED = dict(micro_batch_size=2, checkpoint_steps=2, validation_steps=1)
LOSS_TOLERANCE = 1e-5


def _torchrun(config: TrainConfig, **popen: object) -> subprocess.Popen:
    nano_gpt = Path(sys.executable).parent / "nano-gpt"  # as in the README: $(which nano-gpt)
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(nano_gpt), *_cli_args(config)], text=True, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _train_losses(log_file: Path) -> dict[int, float]:
    """Step -> loss of a run's log; a line still being written (no newline yet) is left out."""
    lines = log_file.read_text().splitlines(keepends=True) if log_file.exists() else []
    records = [json.loads(line) for line in lines if line.endswith("\n")]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


@pytest.fixture(scope="module")
def one_process(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, list[float]]:
    """The reference: one process with four micro-steps per step."""
    config = _config(tinyshakespeare_dir, tmp_path_factory.mktemp("one"), **SHARDED)
    return config, train(config).losses


@pytest.fixture(scope="module")
def killed_and_resumed(one_process: tuple, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An FSDP run SIGKILLed (launcher and workers) after step 3, its newest checkpoint being step 2's; then the
    same command with --resume=auto."""
    config, _ = one_process
    folder = tmp_path_factory.mktemp("fsdp")
    run = dataclasses.replace(config, checkpoint_dir=str(folder), parallelism="fsdp")
    proc = _torchrun(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log_file, deadline = folder / "train_log.jsonl", time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if 3 in _train_losses(log_file):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = _train_losses(log_file)
    checkpoints = sorted(p.name for p in folder.glob("checkpoint_*"))
    # A save that a kill interrupted: shards written, never renamed into place (its process is gone).
    dead = 99999999  # no process has this id
    interrupted = folder / f".checkpoint_000004.nano-gpt-tmp.{dead}.0123abcd"
    shutil.copytree(folder / "checkpoint_000002", interrupted)
    (folder / f".nano-gpt-temps.{dead}").write_text(interrupted.name + "\n")  # what its killed writer recorded
    (interrupted / ".metadata").unlink()
    out = _finish(_torchrun(dataclasses.replace(run, resume="auto"), stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    return dict(config=run, folder=folder, before=before, checkpoints_at_kill=checkpoints, out=out,
                interrupted=interrupted)


def test_fsdp_matches_ddp_and_one_process_with_twice_the_accumulation(one_process: tuple, killed_and_resumed: dict,
                                                                      tmp_path: Path) -> None:
    config, reference = one_process
    # Activation checkpointing recomputes the same numbers in the backward pass, so it rides along here.
    ddp = dataclasses.replace(config, checkpoint_dir=str(tmp_path), parallelism="ddp", activation_checkpointing=True)
    _finish(_torchrun(ddp, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    ddp_losses = list(_train_losses(tmp_path / "train_log.jsonl").values())
    fsdp_losses = list(_train_losses(killed_and_resumed["folder"] / "train_log.jsonl").values())
    assert fsdp_losses == pytest.approx(reference, abs=LOSS_TOLERANCE)
    assert fsdp_losses == pytest.approx(ddp_losses, abs=LOSS_TOLERANCE)
    assert reference[-1] < reference[0] - 0.5  # the runs compared do train
    records = [json.loads(line) for line in (killed_and_resumed["folder"] / "train_log.jsonl").read_text().splitlines()]
    [settings] = [r for r in records if r["kind"] == "config"]
    assert settings["world_size"] == 2 and settings["config"]["parallelism"] == "fsdp"


def test_sigkill_after_a_sharded_checkpoint_then_resume_continues_identically(killed_and_resumed: dict) -> None:
    run = killed_and_resumed
    assert run["checkpoints_at_kill"] == ["checkpoint_000002"]  # a folder of shards, complete, and the newest
    shards = sorted(p.name for p in (run["folder"] / "checkpoint_000002").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp", "checksums.json"]  # each rank wrote its own
    resumed = _train_losses(run["folder"] / "train_log.jsonl")
    assert list(resumed) == list(range(6))  # the log reads as one run
    assert resumed[3] == run["before"][3]  # bit-identical: the step the killed run had already taken
    assert "last step: 5" in run["out"] and run["out"].count("last step:") == 1
    assert not run["interrupted"].exists()  # the interrupted save was ignored by --resume=auto, then removed
    assert latest_checkpoint(run["folder"]).name == "checkpoint_000005"


def test_a_damaged_shard_of_the_other_rank_stops_a_torchrun_resume_in_one_line(killed_and_resumed: dict,
                                                                               tmp_path: Path) -> None:
    """Rank 1's shard of the newest checkpoint has a flipped bit: the launch stops before step 0 with one line,
    from rank 0, naming the folder and the older checkpoint that --resume can take."""
    folder = Path(shutil.copytree(killed_and_resumed["folder"], tmp_path / "run"))
    shard = folder / "checkpoint_000005" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    run = dataclasses.replace(killed_and_resumed["config"], checkpoint_dir=str(folder), resume="auto", max_steps=8)
    proc = _torchrun(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, err[-3000:]
    assert "checkpoint_000005" in errors[0] and "damaged" in errors[0] and "checkpoint_000004" in errors[0]
    assert "rank 1" not in errors[0]
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if not p.name.endswith("lock")} == \
        {p: t for p, t in before.items() if not p.name.endswith("lock")}


def test_a_two_rank_checkpoint_resumes_in_one_process_and_exports_to_hugging_face(
        one_process: tuple, killed_and_resumed: dict, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    config, reference = one_process
    shutil.copytree(killed_and_resumed["folder"] / "checkpoint_000002", tmp_path / "checkpoint_000002")
    resumed = train(dataclasses.replace(config, checkpoint_dir=str(tmp_path), resume="auto"))
    assert resumed.losses == pytest.approx(reference[3:], abs=LOSS_TOLERANCE)
    assert resumed.checkpoint.name == "checkpoint_000005.bin"  # one process writes a file again
    # The sharded final checkpoint, put together, holds the weights one process trained (see the tolerance).
    sharded = killed_and_resumed["folder"] / "checkpoint_000005"
    whole = torch.load(resumed.checkpoint, weights_only=True)["model"]
    model = load_model(sharded)
    assert max((model.state_dict()[k] - v).abs().max().item() for k, v in whole.items()) < 5e-5
    assert read_checkpoint(sharded, weights=False).step == 5

    result = run_cli("export", f"--checkpoint={sharded}", f"--export-dir={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(idx)[0][..., :50257], hf(idx).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


class _RunsCode:
    """Pickles as a call to `os.system`: what a malicious checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_sharded_checkpoint_that_pickles_code_is_refused_without_running_it(tmp_path: Path) -> None:
    from nano_gpt.errors import NanoGPTError
    from nano_gpt.checkpoint.integrity import folder_checksums
    from nano_gpt.checkpoint.sharded import save_sharded

    marker = tmp_path / "ran"
    save_sharded(tmp_path / "entry", {"model": {"w": torch.ones(2)}, "model_config": {}, "step": _RunsCode(marker)})
    with pytest.raises(NanoGPTError, match="refuses to load"):
        read_checkpoint(tmp_path / "entry")
    save_sharded(tmp_path / "index", {"model": {"w": torch.ones(2)}, "model_config": {}})
    (tmp_path / "index" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(NanoGPTError, match="is damaged: .metadata"):  # its checksum no longer matches
        load_model(tmp_path / "index")
    # Whoever can replace the index can rewrite its checksum too: the unpickler still refuses it.
    checksums = tmp_path / "index" / "checksums.json"
    checksums.write_text(json.dumps(folder_checksums(tmp_path / "index")))
    with pytest.raises(NanoGPTError, match="refuses to load"):
        load_model(tmp_path / "index")
    assert not marker.exists()
