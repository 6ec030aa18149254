"""`train --report-to`: TensorBoard, W&B (offline) and Trackio store what the JSON-lines log holds, each step once
across a resume, read back through each tracker's own reader; failures never cost the run."""

import dataclasses
import functools
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli_here, tiny_train_config
from nano_gpt.errors import NanoGPTError
from nano_gpt.train import train
from nano_gpt.trackers import RunStart, open_trackers, parse_report_to

TINY = dict(model="gpt2-xxs", dataset="tinyshakespeare", device="cpu", sequence_length=32, micro_batch_size=4,
            total_batch_size=128, max_steps=6, warmup_steps=2, max_lr=3e-3, eval_steps=1000, validation_steps=1,
            hellaswag_samples=0, compile=False, dtype="float32", checkpoint_steps=2)


_config = functools.partial(tiny_train_config, TINY)


def _log(checkpoint_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (checkpoint_dir / "train_log.jsonl").read_text().splitlines()]


def _logged(records: list[dict], kind: str, field: str) -> dict[int, float]:
    return {r["step"]: r[field] for r in records if r["kind"] == kind}


@pytest.fixture(scope="module")
def resumed_run(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run reporting to all three trackers that stops after step 4 and is resumed from its step-2 checkpoint:
    steps 3 and 4 were sent to the trackers before and are trained again, as after a kill between checkpoints."""
    pytest.importorskip("tensorboard", reason="pip install 'nano-gpt[tensorboard]'")
    pytest.importorskip("wandb", reason="pip install 'nano-gpt[wandb]'")
    root = tmp_path_factory.mktemp("trackers")
    if "trackio" in sys.modules:  # its store's folder is read from TRACKIO_DIR when it is imported
        pytest.skip("trackio was imported before this module could point TRACKIO_DIR at a temporary folder")
    saved = {k: os.environ.get(k) for k in ("TRACKIO_DIR", "WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(TRACKIO_DIR=str(root / "trackio"), WANDB_MODE="offline", WANDB_SILENT="true")
    try:
        pytest.importorskip("trackio", reason="pip install 'nano-gpt[trackio]'")
        checkpoint_dir = root / "run"
        config = _config(tinyshakespeare_dir, checkpoint_dir, report_to="tensorboard,wandb,trackio", project="tests")
        train(dataclasses.replace(config, stop_at_step=4))
        train(dataclasses.replace(config, resume=str(checkpoint_dir / "checkpoint_000002.bin")))
        yield checkpoint_dir
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_tensorboard_holds_the_logs_scalars_each_step_once_across_a_resume(resumed_run: Path) -> None:
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    records = _log(resumed_run)
    for kind, field in (("train", "loss"), ("train", "lr"), ("train", "norm"), ("train", "tokens"),
                        ("train", "tok_per_sec"), ("val", "val_loss")):
        assert _tensorboard_scalars(resumed_run / "tensorboard", f"{kind}/{field}") == pytest.approx(
            _logged(records, kind, field), rel=1e-6), (kind, field)
    samples = EventAccumulator(str(resumed_run / "tensorboard"), size_guidance={"tensors": 0}).Reload().Tensors(
        "samples/text_summary")
    assert [e.step for e in samples] == [0, 5]  # the first run's step-4 evaluation superseded
    assert make_ndarray(samples[-1].tensor_proto).item().decode().strip().startswith(
        [r for r in records if r["kind"] == "sample"][-1]["texts"][0][:20])


def _tensorboard_scalars(folder: Path, tag: str) -> dict[int, float]:
    """{step: value} as TensorBoard's own server reads the run: what a resumed run's purge_step supersedes dropped."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload().Tensors(tag)
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"a step shown twice: {steps}"
    return {e.step: make_ndarray(e.tensor_proto).item() for e in events}


def test_a_sigkilled_run_resumed_shows_each_step_once_in_tensorboard(tinyshakespeare_dir: Path,
                                                                     tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'nano-gpt[tensorboard]'")
    settings = {**TINY, "max_steps": 1000, "checkpoint_steps": 3, "report_to": "tensorboard"}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items() if k != "compile"]
    proc = subprocess.Popen([sys.executable, "-m", "nano_gpt", "train", *args, "--no-compile",
                             f"--dataset-dir={tinyshakespeare_dir}", f"--checkpoint-dir={tmp_path}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, deadline = tmp_path / "train_log.jsonl", time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not (
            log.exists() and '"kind": "train", "step": 4' in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = max(r["step"] for r in _log(tmp_path) if r["kind"] == "train")
    train(_config(tinyshakespeare_dir, tmp_path, **{**settings, "resume": "auto", "stop_at_step": killed_at + 1}))
    losses = _logged(_log(tmp_path), "train", "loss")
    assert sorted(losses) == list(range(killed_at + 2))
    assert _tensorboard_scalars(tmp_path / "tensorboard", "train/loss") == pytest.approx(losses, rel=1e-6)


def test_wandb_offline_run_is_continued_under_its_id_from_the_checkpoint(resumed_run: Path) -> None:
    import torch

    run_id = torch.load(resumed_run / "checkpoint_000005.bin", weights_only=True)["trackers"]["wandb"]["id"]
    folders = sorted((resumed_run / "wandb").glob("offline-run-*"))
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [run_id, run_id]
    first, second = (_wandb_history(next(f.glob("*.wandb"))) for f in folders)
    losses = _logged(_log(resumed_run), "train", "loss")
    assert sorted(first) == [0, 1, 2, 3, 4] and sorted(second) == [3, 4, 5]  # offline, W&B cannot know what it holds
    for history in (first, second):
        assert {s: h["train/loss"] for s, h in history.items()} == pytest.approx({s: losses[s] for s in history})
    trackers = [r for r in _log(resumed_run) if r["kind"] == "trackers"]
    assert [r["runs"]["wandb"]["id"] for r in trackers] == [run_id, run_id]


def test_trackio_store_holds_the_logs_losses_each_step_once_across_a_resume(resumed_run: Path) -> None:
    import trackio

    rows = trackio.SQLiteStorage.get_logs("tests", resumed_run.name)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == list(range(6))
    assert [r["train/loss"] for r in train_rows] == pytest.approx(list(_logged(_log(resumed_run), "train", "loss")
                                                                      .values()))
    # Trackio keeps what it was sent: the first run's evaluation at step 4, past the checkpoint it resumed from.
    assert [r["step"] for r in rows if "val/val_loss" in r] == [0, 4, 5]


def _wandb_history(path: Path) -> dict[int, dict[str, float]]:
    """The history rows of an offline run's .wandb file: LevelDB-log framing around wandb's own Record protobufs."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, history = 32768, 7, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history.setdefault(record.history.step.num, {}).update(items)
    return {step: row for step, row in history.items() if "train/loss" in row}


def test_a_tracker_that_fails_mid_run_warns_once_and_training_finishes(
        tinyshakespeare_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("tensorboard", reason="pip install 'nano-gpt[tensorboard]'")
    from nano_gpt import trackers

    def full_disk(self: object, record: dict) -> None:
        if record["step"] >= 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers._TensorBoard, "log", full_disk)
    with caplog.at_level(logging.WARNING):
        result = train(_config(tinyshakespeare_dir, tmp_path, report_to="tensorboard", max_steps=4, warmup_steps=1))
    assert result.last_step == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == trackers.__name__]
    assert len(warnings) == 1 and "tensorboard failed at step 2" in warnings[0] and "No space left" in warnings[0]


def test_a_tracker_not_installed_is_one_error_line_before_step_0(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` meets when it is not installed
    config = _config(tinyshakespeare_dir, tmp_path, report_to="wandb")
    result = run_cli_here("train", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "compile"),
                          "--no-compile", f"--dataset-dir={tinyshakespeare_dir}", f"--checkpoint-dir={tmp_path}",
                          f"--report-to={config.report_to}")
    assert_one_line_error(result, 'pip install "nano-gpt[wandb]"')
    assert not list(tmp_path.glob("checkpoint_*")) and not (tmp_path / "train_log.jsonl").exists()


def test_wandb_online_without_a_login_is_one_error_line(tinyshakespeare_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb", reason="pip install 'nano-gpt[wandb]'")
    wandb.teardown()  # W&B reads its settings (WANDB_MODE among them) once per process
    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: never logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    result = run_cli_here("train", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "compile"),
                          "--no-compile", f"--dataset-dir={tinyshakespeare_dir}",
                          f"--checkpoint-dir={tmp_path / 'run'}", "--report-to=wandb")
    wandb.teardown()
    assert_one_line_error(result, "wandb login", "WANDB_MODE=offline")
    assert not list((tmp_path / "run").glob("checkpoint_*"))


def test_only_the_main_process_opens_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # a rank that tried to open it would fail
    start = RunStart(tmp_path, "p", "run", 0, {})
    assert open_trackers(("wandb",), start, {}, is_main=False) is None
    with pytest.raises(NanoGPTError, match="nano-gpt\\[wandb\\]"):
        open_trackers(("wandb",), start, {}, is_main=True)


def test_report_to_takes_comma_separated_known_names() -> None:
    assert parse_report_to("tensorboard, wandb,tensorboard") == ("tensorboard", "wandb")
    assert parse_report_to(None) == parse_report_to("none") == ()
    with pytest.raises(NanoGPTError, match="unknown tracker 'mlflow'"):
        parse_report_to("tensorboard,mlflow")
    assert_one_line_error(run_cli_here("train", "--report-to=mlflow"), "unknown tracker 'mlflow'", "tensorboard")


def test_plot_still_reads_a_log_with_sample_and_trackers_records(resumed_run: Path) -> None:
    from nano_gpt.runlog import read_log, summarize

    assert [r["kind"] for r in _log(resumed_run)][:2] == ["config", "trackers"]  # a log still begins as a run's log
    log = read_log(resumed_run / "train_log.jsonl")
    assert summarize(log).last_step == 5 and [r["step"] for r in log.records["val"]] == [0, 5]
