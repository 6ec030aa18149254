"""The training loop on TinyShakespeare with a tiny model: exact resume, accumulation, DDP, compile, errors."""

import dataclasses
import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli, run_cli_here, tiny_train_config, write_hellaswag_file
from nano_gpt import load_pretrained
from nano_gpt.cli.train import option_name
from nano_gpt.errors import NanoGPTError
from nano_gpt.train import TrainConfig, train

TINY = dict(model="gpt2-xxs", dataset="tinyshakespeare", device="cpu", sequence_length=32, micro_batch_size=4,
            total_batch_size=256, max_steps=6, warmup_steps=2, max_lr=3e-3, eval_steps=1000, validation_steps=2,
            hellaswag_samples=0, compile=False, dtype="float32", checkpoint_steps=1000)


_config = functools.partial(tiny_train_config, TINY)


def _cli_args(config: TrainConfig) -> list[str]:
    """The command line that gives `config`, spelled with each field's own option."""
    flags = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if value is None or value == field.default:
            continue
        on, _, off = option_name(field).partition("/")
        flags.append((on if value else off) if isinstance(value, bool) else f"{on}={value}")
    return ["train", *flags]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def straight_run(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, list[float], Path]:
    config = _config(tinyshakespeare_dir, tmp_path_factory.mktemp("straight"))
    result = train(config)
    return config, result.losses, result.checkpoint


def test_loss_falls_and_checkpoint_and_log_are_written(straight_run: tuple) -> None:
    config, losses, checkpoint = straight_run
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert checkpoint.name == "checkpoint_000005.bin"
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == 5 and state["train_config"]["model"] == "gpt2-xxs" and "optimizer" in state
    records = [json.loads(line) for line in Path(config.checkpoint_dir, "train_log.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "config" and kinds.count("train") == 6 and kinds.count("val") == 2  # step 0 and the last
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["loss"] for r in train_records] == pytest.approx(losses)
    assert train_records[-1]["tokens"] == 6 * 256


def test_stop_then_resume_gives_identical_losses_and_weights(straight_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = straight_run
    halves = dataclasses.replace(config, checkpoint_dir=str(tmp_path))
    first = train(dataclasses.replace(halves, stop_at_step=2))
    assert first.last_step == 2 and first.checkpoint.name == "checkpoint_000002.bin"
    second = train(dataclasses.replace(halves, resume="auto"))
    assert first.losses + second.losses == losses  # bit-identical
    final = _weights(second.checkpoint)
    assert all(torch.equal(final[k], v) for k, v in _weights(checkpoint).items())
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps == list(range(6))  # the resumed log reads as one run


def test_resuming_with_other_run_settings_warns(straight_run: tuple, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    config, _, _ = straight_run
    first = dataclasses.replace(config, checkpoint_dir=str(tmp_path), stop_at_step=0)
    train(first)
    with caplog.at_level("WARNING"):
        train(dataclasses.replace(first, stop_at_step=1, resume="auto", seed=7))
    assert "seed 1337 -> 7" in caplog.text and "differ from the checkpoint" in caplog.text


def test_gradient_accumulation_equals_one_big_batch(straight_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = straight_run  # micro batch 4, 2 accumulation steps
    big = train(dataclasses.replace(config, micro_batch_size=8, checkpoint_dir=str(tmp_path)))
    assert big.losses == pytest.approx(losses, abs=1e-5)
    final = _weights(big.checkpoint)
    # The fused loss sums each micro-batch's gradient chunk by chunk, so two micro-batches of 4 add in another
    # order than one of 8; Adam's normalisation amplifies that rounding on near-zero gradients (see the DDP test).
    assert max((final[k] - v).abs().max().item() for k, v in _weights(checkpoint).items()) < 1e-4


def sigkill_after(config: TrainConfig, checkpoint: str) -> None:
    """Run `config` through the CLI in a process of its own and SIGKILL it once `checkpoint` is written."""
    proc = subprocess.Popen([sys.executable, "-m", "nano_gpt", *_cli_args(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (Path(config.checkpoint_dir) / checkpoint).exists() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_sigkill_mid_run_then_resume_matches_the_straight_run(straight_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = straight_run
    killed = dataclasses.replace(config, checkpoint_dir=str(tmp_path), checkpoint_steps=1)
    sigkill_after(killed, "checkpoint_000002.bin")
    assert not (tmp_path / "checkpoint_000005.bin").exists()
    resumed = run_cli(*_cli_args(dataclasses.replace(killed, resume="auto")))
    assert resumed.returncode == 0, resumed.stderr
    final = _weights(tmp_path / "checkpoint_000005.bin")
    assert all(torch.equal(final[k], v) for k, v in _weights(checkpoint).items())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; a scheduler, `timeout`, docker stop
def test_ctrl_c_or_sigterm_writes_a_checkpoint_and_exits_cleanly(straight_run: tuple, tmp_path: Path,
                                                                 signum: int) -> None:
    config, _, _ = straight_run
    run = dataclasses.replace(config, checkpoint_dir=str(tmp_path), max_steps=1000)
    proc = subprocess.Popen([sys.executable, "-m", "nano_gpt", *_cli_args(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step: 1 |"):
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "Traceback" not in err
    assert "--resume=auto" in err
    [checkpoint] = tmp_path.glob("checkpoint_*.bin")
    assert torch.load(checkpoint, weights_only=True)["step"] >= 1


def test_nan_loss_stops_with_a_clear_message_keeping_the_last_good_checkpoint(straight_run: tuple, tmp_path: Path) -> None:
    config, _, _ = straight_run
    run = dataclasses.replace(config, checkpoint_dir=str(tmp_path), warmup_steps=1, max_steps=50, checkpoint_steps=1)
    train(dataclasses.replace(run, stop_at_step=0))  # a good checkpoint to fall back on
    exploding = dataclasses.replace(run, resume="auto", max_lr=1e6, grad_clip=1e9)
    with pytest.raises(NanoGPTError, match="stopped before updating the weights") as e:
        train(exploding)
    good = sorted(tmp_path.glob("checkpoint_*.bin"))[-1]
    assert f"The last good checkpoint is {good}" in str(e.value)
    assert all(torch.isfinite(t).all() for t in _weights(good).values())


def test_fp16_keeps_the_grad_scaler_in_checkpoints_and_stays_finite(straight_run: tuple, tmp_path: Path) -> None:
    config, _, _ = straight_run
    result = train(dataclasses.replace(config, checkpoint_dir=str(tmp_path), dtype="float16", max_steps=4))
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["scaler"]["scale"] > 0  # the scaler's state travels with the checkpoint
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(torch.isfinite(torch.tensor(loss)) for loss in result.losses)


def test_compiled_run_evaluates_and_samples(straight_run: tuple, tmp_path: Path) -> None:
    config, _, _ = straight_run
    hellaswag = write_hellaswag_file(tmp_path / "hellaswag.jsonl")
    run = dataclasses.replace(config, checkpoint_dir=str(tmp_path), compile=True, max_steps=3, eval_steps=2,
                              hellaswag_samples=4, hellaswag_file=str(hellaswag))
    result = train(run)
    assert result.last_step == 2
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert kinds.count("val") == 2 and kinds.count("hellaswag") == 2


def test_ddp_under_torchrun_matches_one_process_with_twice_the_accumulation(straight_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = straight_run  # one process: micro batch 4 x 32 x 2 accumulation steps
    ddp = dataclasses.replace(config, checkpoint_dir=str(tmp_path))  # two processes: 1 accumulation step each
    nano_gpt = Path(sys.executable).parent / "nano-gpt"  # as in the README: $(which nano-gpt)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(nano_gpt), *_cli_args(ddp)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("last step:") == 1  # rank 0 alone speaks for the run
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r["kind"] == "config"] == [2]
    assert [r["loss"] for r in records if r["kind"] == "train"] == pytest.approx(losses, abs=1e-5)
    # Gloo sums the two ranks' gradients in another order than accumulation does; Adam's normalisation
    # amplifies that rounding for near-zero gradients to ~1e-5, far below what the 6 steps move a weight.
    final, single = _weights(tmp_path / "checkpoint_000005.bin"), _weights(checkpoint)
    assert max((final[k] - v).abs().max().item() for k, v in single.items()) < 5e-5
    moved = (single["transformer.h.0.attn.c_attn.weight"] - _initial_weights()["transformer.h.0.attn.c_attn.weight"])
    assert moved.abs().max().item() > 1e-3


def _initial_weights() -> dict[str, torch.Tensor]:
    from nano_gpt import GPT, GPTConfig

    torch.manual_seed(TrainConfig().seed)
    return GPT(GPTConfig.from_preset("gpt2-xxs")).state_dict()


@pytest.mark.parametrize(("args", "fragments"), [
    (["--dataset=nothing-here"], ["matches no files"]),
    (["--total-batch-size=1000"], ["not divisible"]),
    (["--device=cuda"], ["CUDA is not available"]),
    (["--resume=missing.bin"], ["missing.bin", "not found"]),
    (["--model=gpt5"], ["unknown model"]),
    (["--sequence-length=2048"], ["context of 1024"]),
])
def test_bad_train_input_is_a_one_line_error(tinyshakespeare_dir: Path, tmp_path: Path, args: list[str],
                                             fragments: list[str]) -> None:
    base = [f"--dataset-dir={tinyshakespeare_dir}", "--dataset=tinyshakespeare", "--model=gpt2-xxs",
            "--device=cpu", "--sequence-length=32", "--micro-batch-size=4", "--total-batch-size=256",
            f"--checkpoint-dir={tmp_path}", "--hellaswag-samples=0", "--no-compile"]
    overridden = {a.split("=")[0] for a in args}
    result = run_cli_here("train", *[a for a in base if a.split("=")[0] not in overridden], *args)
    assert_one_line_error(result, *fragments)


def test_pretrained_weights_are_the_starting_point_for_fine_tuning(tinyshakespeare_dir: Path, tmp_path: Path,
                                                                   tiny_hf_gpt2_vocab_dir: Path) -> None:
    from nano_gpt.data import ShardLoader

    config = _config(tinyshakespeare_dir, tmp_path, pretrained=str(tiny_hf_gpt2_vocab_dir), max_steps=2, warmup_steps=1)
    result = train(config)
    state = torch.load(result.checkpoint, weights_only=True)
    assert (state["model_config"]["vocab_size"], state["model_config"]["block_size"]) == (50257, 128)
    # The first step's loss is the pretrained model's loss on the same two micro-batches.
    model = load_pretrained(str(tiny_hf_gpt2_vocab_dir))
    loader = ShardLoader(tinyshakespeare_dir, "tinyshakespeare", "train", 4, 32, shuffle=True, seed=config.seed)
    with torch.no_grad():
        expected = sum(model(*loader.next_batch(), return_logits=False)[1].item() for _ in range(2)) / 2
    assert result.losses[0] == pytest.approx(expected, abs=1e-5)
