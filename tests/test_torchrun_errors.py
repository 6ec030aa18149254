"""Under torchrun a refusal is told once: rank 0 prints the one `error:` line, the other ranks exit quietly with
the same code; what the launch itself cannot do (batch sizes that do not divide over its processes, FSDP in
fp16) is refused before any process group is joined or any file written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from conftest import files_under
from nano_gpt.errors import NanoGPTError
from nano_gpt.runlog import LOG_FILE
from nano_gpt.train import TrainConfig, train
from nano_gpt.train.rundir import RUN_LOCK

TINY = dict(model="gpt2-xxs", device="cpu", dtype="fp32", compile=False, sequence_length=32, micro_batch_size=1,
            max_steps=2, warmup_steps=0, max_lr=1e-3, validation_steps=0, hellaswag_samples=0)


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"total_batch_size": 96}, "not divisible"),  # 96 = 3 x 32: one process divides it, two do not
    ({"total_batch_size": 64, "parallelism": "fsdp", "dtype": "fp16"}, "fp16"),
])
def test_what_the_launch_cannot_do_is_refused_before_a_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      settings: dict, fragment: str) -> None:
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():  # as torchrun sets them
        monkeypatch.setenv(name, value)
    corpus = tmp_path / "corpus.txt"  # a real dataset (train prepares it), so only the launch can be refused
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    config = TrainConfig(**{**TINY, **settings}, dataset=str(corpus), dataset_dir=str(tmp_path / "data"),
                         checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(NanoGPTError, match=fragment):
        train(config)
    assert not dist.is_initialized() and not (tmp_path / "run").exists()


def test_fsdp_is_refused_before_a_process_group_when_auto_chooses_fp16(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--dtype=auto gives fp16 on GPUs without bf16: found out when the runtime is built, still before joining."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("nano_gpt.runtime.resolve_dtype", lambda *args: (torch.float16, "auto: a GPU without bf16"))
    joined = []
    monkeypatch.setattr("nano_gpt.distributed.init_process_group", joined.append)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    config = TrainConfig(**{**TINY, "dtype": "auto"}, total_batch_size=64, parallelism="fsdp", dataset=str(corpus),
                         dataset_dir=str(tmp_path / "data"), checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(NanoGPTError, match="fp16 would need a loss scaler"):
        train(config)
    assert joined == [] and not dist.is_initialized()
    assert not list((tmp_path / "run").glob("*.pt")) and not (tmp_path / "run" / LOG_FILE).exists()


def test_a_refusal_under_torchrun_is_one_line_from_rank_0(tmp_path: Path) -> None:
    """The dataset is missing, found out by every rank after the process group is joined."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "compile"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "nano_gpt", "train", *args, "--no-compile", "--total-batch-size=64",
                             "--dataset=nothing-here", f"--dataset-dir={tmp_path / 'data'}",
                             f"--checkpoint-dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--dataset=nothing-here matches no files" in errors[0] and "rank 1" not in errors[0], result.stderr
    assert f"traceback : {errors[0]}" in result.stderr  # torchrun's summary shows the line, not a link to its docs
    assert "new message format" not in result.stderr  # the error file is in the form torchrun reads without warning
    assert sum("is not prepared" in line for line in result.stderr.splitlines()) == 1  # rank 0 alone logs INFO


def test_a_torchrun_launch_on_a_live_run_is_refused_in_one_line(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    """Rank 0 takes the run's lock for all ranks: a run still going (here, a process holding its lock) refuses the
    launch, named by its PID, and nothing in its folder changes."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("the live run's")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                               "from nano_gpt.files import ProcessLock; ProcessLock.acquire(Path(sys.argv[1])); "
                               "print('held', flush=True); sys.stdin.read()", str(run / RUN_LOCK)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        before = files_under(run)
        args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "compile"]
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 "-m", "nano_gpt", "train", *args, "--no-compile", "--total-batch-size=64",
                                 "--dataset=tinyshakespeare", f"--dataset-dir={tinyshakespeare_dir}",
                                 f"--checkpoint-dir={run}", "--resume=auto"],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"PID {holder.pid}" in errors[0] and "still going" in errors[0], result.stderr
        assert files_under(run) == before
    finally:
        holder.kill()
        holder.wait()
