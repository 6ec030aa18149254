"""Training refuses what would fail later, before step 0; keeps one run per folder; validates checkpoints;
and never lets a non-finite step change the weights."""

import dataclasses
import functools
import os
from pathlib import Path

import pytest
import torch
import typer
from torch import nn

from conftest import (assert_one_line_error, files_under, finished_tiny_run, run_cli_here, tiny_train_args,
                      tiny_train_config)
from nano_gpt.checkpoint import save_checkpoint
from nano_gpt.cli import app
from nano_gpt.cli.train import option_name
from nano_gpt.config import PRESETS, GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.runtime import Runtime
from nano_gpt.train import TrainConfig, train
from nano_gpt.train.config import recipe_for
from nano_gpt.train.step import NonFiniteError, train_step

TINY = dict(model="gpt2-xxs", dataset="tinyshakespeare", device="cpu", sequence_length=32, micro_batch_size=4,
            total_batch_size=256, max_steps=3, warmup_steps=1, max_lr=3e-3, eval_steps=1000, validation_steps=1,
            hellaswag_samples=0, compile=False, dtype="fp32", checkpoint_steps=1000)


_config = functools.partial(tiny_train_config, TINY)
_args = functools.partial(tiny_train_args, TINY)


@pytest.fixture(scope="module")
def finished_run(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder holding a finished run's checkpoint and log."""
    return finished_tiny_run(TINY, tinyshakespeare_dir, tmp_path_factory)


# --- the command line and the config are one source -------------------------------------------------

def test_every_train_config_field_has_exactly_one_option_with_its_help() -> None:
    command = typer.main.get_command(app).commands["train"]
    options = {p.name: p for p in command.params if p.param_type_name == "option" and not p.hidden}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(options) == set(fields)
    for name, field in fields.items():
        assert options[name].help == field.metadata["help"], name
        assert option_name(field).split("/")[0] in options[name].opts, name


def test_the_seeds_checkpoint_flag_resumes_from_that_file(finished_run: Path, tinyshakespeare_dir: Path,
                                                          tmp_path: Path) -> None:
    result = run_cli_here(*_args(tinyshakespeare_dir, finished_run, "--checkpoint=" + str(finished_run / "checkpoint_000002.bin"),
                            "--max-steps=3"))
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stderr and "at step 3" in result.stderr  # nothing left to run


# --- checks before step 0 ----------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "fragments"), [
    ("--grad-clip=-1", ["--grad-clip=-1.0", "positive"]),
    ("--max-lr=nan", ["--max-lr=nan"]),
    ("--max-lr=inf", ["--max-lr=inf"]),
    ("--min-lr-ratio=1.5", ["--min-lr-ratio"]),
    ("--weight-decay=-1", ["--weight-decay"]),
    ("--seed=18446744073709551616", ["--seed"]),
    ("--stop-at-step=-2", ["--stop-at-step"]),
    ("--dtype=fp64", ["--dtype=fp64", "auto, fp32, bf16 or fp16"]),
])
def test_numbers_out_of_range_fail_before_anything_is_written(tinyshakespeare_dir: Path, tmp_path: Path, flag: str,
                                                              fragments: list[str]) -> None:
    run = tmp_path / "run"
    assert_one_line_error(run_cli_here(*_args(tinyshakespeare_dir, run, flag)), *fragments)
    assert not run.exists() or files_under(run) == {}


def test_a_checkpoint_dir_under_a_file_fails_at_start(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "file" / "run"))
    assert_one_line_error(result, "--checkpoint-dir", "not writable")
    assert "step: 0" not in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_dir_fails_at_start(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        assert_one_line_error(run_cli_here(*_args(tinyshakespeare_dir, run)), "--checkpoint-dir", "not writable")
    finally:
        run.chmod(0o755)


def test_a_log_file_that_is_a_folder_fails_at_start(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", f"--log-file={tmp_path / 'log'}"))
    assert_one_line_error(result, "--log-file", "is a folder")


def test_a_missing_validation_split_fails_at_start_under_no_prepare(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    dataset_dir = tmp_path / "data"
    (dataset_dir / "tinyshakespeare").mkdir(parents=True)
    os.symlink(tinyshakespeare_dir / "tinyshakespeare" / "train", dataset_dir / "tinyshakespeare" / "train")
    result = run_cli_here(*_args(dataset_dir, tmp_path / "run"), "--no-prepare")
    assert_one_line_error(result, "validation", "prepare_dataset")


# --- one run per folder ------------------------------------------------------------------------------

def test_a_new_run_in_a_folder_holding_another_is_refused_and_changes_nothing(finished_run: Path,
                                                                              tinyshakespeare_dir: Path) -> None:
    before = files_under(finished_run)
    result = run_cli_here(*_args(tinyshakespeare_dir, finished_run, "--seed=7"))
    assert_one_line_error(result, "already holds a run", "--resume=auto", "--checkpoint-dir", "--overwrite")
    assert files_under(finished_run) == before


def test_overwrite_starts_afresh_and_leaves_nothing_of_the_old_run(finished_run: Path, tinyshakespeare_dir: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "checkpoint_000900.bin").write_bytes((run / "checkpoint_000002.bin").read_bytes())  # a later one
    result = train(_config(tinyshakespeare_dir, run, overwrite=True, max_steps=2, warmup_steps=1))
    assert sorted(p.name for p in run.glob("checkpoint_*.bin")) == ["checkpoint_000001.bin"]
    assert result.last_step == 1
    steps = [line for line in (run / "train_log.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(steps) == 2


def test_recorded_temps_of_dead_processes_are_removed_and_live_ones_kept(tinyshakespeare_dir: Path,
                                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    # A process killed mid-save: it recorded its temp, wrote half of it and never renamed it.
    killed = subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; "
                             "from nano_gpt.files import temp_path; "
                             "t = temp_path(Path(sys.argv[1]) / 'checkpoint_000003.bin'); t.write_bytes(b'half'); "
                             "print(t); os._exit(0)", str(run)], capture_output=True, text=True, check=True)
    stale = Path(killed.stdout.strip())
    from nano_gpt.files import discard_temp, temp_path

    live = temp_path(run / "checkpoint_000004.bin")  # this process is still writing it
    live.write_bytes(b"being written")
    try:
        train(_config(tinyshakespeare_dir, run, max_steps=2, warmup_steps=1))
        assert not stale.exists() and live.exists()
        assert [p.name for p in run.glob(".nano-gpt-temps.*")] == [f".nano-gpt-temps.{os.getpid()}"]  # the dead one's went
    finally:
        discard_temp(live)


# --- checkpoints are validated before loading ----------------------------------------------------------

def _damaged(source: Path, target: Path, damage: callable) -> Path:
    state = torch.load(source, weights_only=True)
    damage(state)
    save_checkpoint(target, state)
    return target


@pytest.mark.parametrize(("damage", "fragments"), [
    (lambda s: s.pop("optimizer"), ["no 'optimizer'"]),
    (lambda s: s.update(step="5"), ["'step' is a str"]),
    (lambda s: s.update(step=-3), ["step is -3"]),
    (lambda s: s["model_config"].update(n_embd=96), ["has shape", "the config needs"]),
    (lambda s: s["model_config"].update(n_head=5), ["'model_config' is not a GPT config"]),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), ["'rng'"]),
    (lambda s: s["loader"].update(position=-1), ["'loader'"]),
    (lambda s: s["optimizer"].update(param_groups=[]), ["optimizer"]),
])
def test_a_damaged_checkpoint_is_one_line_naming_what_is_wrong(finished_run: Path, tinyshakespeare_dir: Path,
                                                               tmp_path: Path, damage: callable,
                                                               fragments: list[str]) -> None:
    bad = _damaged(finished_run / "checkpoint_000002.bin", tmp_path / "bad" / "checkpoint_000002.bin", damage)
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "bad", f"--resume={bad}", "--max-steps=4"))
    assert_one_line_error(result, str(bad), *fragments)


# --- a non-finite step never changes the weights ----------------------------------------------------

class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; its backward makes every gradient infinite (a finite loss, an infinite norm)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("inf")


class _Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor, return_logits: bool = True) -> tuple[None, torch.Tensor]:
        return None, (_InfiniteGradient.apply(self.weight) * x).sum()


def _step(runtime: Runtime, scaler: torch.amp.GradScaler) -> tuple[nn.Module, object]:
    """One step of `_Exploding` with two micro-batches."""
    model = _Exploding()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    result = train_step(model, [optimizer], scaler, lambda: (torch.ones(4), torch.ones(4)), runtime, grad_accum=2,
                        grad_clip=1.0)
    return model, result


def test_a_non_finite_gradient_norm_stops_before_the_weights_change() -> None:
    runtime = Runtime(torch.device("cpu"), torch.float32, "test")
    model = _Exploding()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteError, match="the gradient norm is (inf|nan)"):
        train_step(model, [optimizer], runtime.grad_scaler(), lambda: (torch.ones(4), torch.ones(4)), runtime, 2, 1.0)
    assert torch.equal(model.weight.detach(), torch.ones(4))


def test_with_fp16_a_non_finite_gradient_norm_skips_the_update() -> None:
    runtime = Runtime(torch.device("cpu"), torch.float16, "test")
    scaler = runtime.grad_scaler()
    model, result = _step(runtime, scaler)
    assert result.skipped and torch.equal(model.weight.detach(), torch.ones(4))
    assert scaler.get_scale() < 2.0**16  # lowered for the next step


# --- fine-tuning follows the pretrained model's size ------------------------------------------------

def test_the_recipe_follows_the_model_size() -> None:
    assert recipe_for(PRESETS["gpt2-medium"]) == "gpt2-medium"
    assert recipe_for(PRESETS["gpt2"]) == "gpt2"
    assert recipe_for(GPTConfig(n_layer=2, n_head=2, n_embd=32)) == "gpt2-xxs"  # the smallest recipe
    assert recipe_for(GPTConfig(n_layer=40, n_head=20, n_embd=1600)) == "gpt2-xl"


def test_fine_tuning_logs_and_uses_the_pretrained_models_recipe(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                tiny_hf_gpt2_vocab_dir: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    import json

    # --model says gpt2-xl, but the pretrained model is tiny: its schedule is gpt2-xxs's.
    config = _config(tinyshakespeare_dir, tmp_path, model="gpt2-xl", pretrained=str(tiny_hf_gpt2_vocab_dir),
                     max_lr=None, max_steps=None, warmup_steps=None, total_batch_size=None, stop_at_step=0,
                     micro_batch_size=128)  # the recipe's 8,192 tokens in 2 micro-steps of 128 x 32
    with caplog.at_level("INFO"):
        train(config)
    [record] = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
                if '"config"' in line]
    assert record["recipe"] == "gpt2-xxs"
    assert (record["config"]["max_lr"], record["config"]["total_batch_size"]) == (3e-3, 8192)
    assert "recipe gpt2-xxs" in caplog.text


def test_an_absurd_micro_batch_is_refused_before_anything_is_allocated(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", "--micro-batch-size=100000000",
                            "--total-batch-size=3200000000"))
    assert_one_line_error(result, "a micro batch of 100,000,000 x 32 tokens", "lower --micro-batch-size")


def test_a_missing_hellaswag_file_fails_before_the_log_is_written(tinyshakespeare_dir: Path, tmp_path: Path) -> None:
    result = run_cli_here(*_args(tinyshakespeare_dir, tmp_path / "run", "--hellaswag-samples=2",
                            f"--hellaswag-file={tmp_path / 'nope.jsonl'}"))
    assert_one_line_error(result, "nope.jsonl")
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_more_validation_steps_than_the_split_holds_are_capped_at_one_pass(tinyshakespeare_dir: Path,
                                                                          tmp_path: Path) -> None:
    from nano_gpt.data import ShardLoader
    from nano_gpt.model import GPT
    from nano_gpt.tokenizer import get_tokenizer
    from nano_gpt.train.evaluator import Evaluator

    config = _config(tinyshakespeare_dir, tmp_path, validation_steps=10**12, micro_batch_size=64).resolved()
    model = GPT(PRESETS["gpt2-xxs"])
    evaluator = Evaluator(config, Runtime(torch.device("cpu"), torch.float32, "test"), model, model, get_tokenizer())
    split = ShardLoader(tinyshakespeare_dir, "tinyshakespeare", "validation", 64, 32)
    assert evaluator.validation_steps == split.steps_per_epoch == 17  # not 10**12 batches, forever


def test_offline_without_a_hellaswag_copy_training_warns_once_and_goes_on(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    import nano_gpt.train.evaluator

    def offline(path: object = None, limit: object = None) -> None:
        raise NanoGPTError("cannot download hellaswag_val.jsonl (no network)")

    monkeypatch.setattr(nano_gpt.train.evaluator, "load_hellaswag", offline)
    by_default = _config(tinyshakespeare_dir, tmp_path / "default", hellaswag_samples=None, max_steps=2,
                         warmup_steps=1)
    with caplog.at_level("WARNING"):
        assert train(by_default).last_step == 1
    assert caplog.text.count("HellaSwag is skipped: cannot download") == 1
    asked_for = dataclasses.replace(by_default, checkpoint_dir=str(tmp_path / "asked"), hellaswag_samples=5)
    with pytest.raises(NanoGPTError, match="cannot download"):
        train(asked_for)
