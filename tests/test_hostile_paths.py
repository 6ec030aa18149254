"""Output and paths a user's shell can hand any command: standard output that is full, closed or goes away, path
options with a name or a path over the file system's limits, bytes that are not UTF-8, an empty path option, a
device given as a file, an empty NANO_GPT_CACHE, and Ctrl-C while the command starts. Each is one `error:` line
(Ctrl-C: a quiet exit 130) and leaves every file already on disk as it was. Then the smaller faults: a license the
Hub does not know, another --model on resume, HellaSwag files with a byte-order mark or over-long endings, and
shards changed under a checkpoint.

Most cases run in this process through `nano_gpt.cli.main`; those where the process itself matters (its
standard output, a signal) run as one.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, files_under, run_cli_here as cli, write_hellaswag_file
from data_corpus import documents
from nano_gpt.data.prepare import prepare_dataset
from nano_gpt.train import TrainConfig, train

LONG_NAME = "n" * 300  # past the 255 bytes a name may have on Linux and macOS file systems
LONG_PATH = "/".join(["d" * 200] * 25)  # 5,000 bytes: past PATH_MAX (4,096)
NOT_UTF8 = os.fsdecode(b"run-\xff")  # what Python makes of a name in Latin-1 on a UTF-8 system


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A prepared corpus, a one-step run's checkpoint and a HellaSwag file."""
    root = tmp_path_factory.mktemp("paths")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(documents(200, words=40)))
    prepare_dataset(str(corpus), dataset_dir=root / "data", num_workers=1)
    train(TrainConfig(model="gpt2-xxs", dataset=str(corpus), dataset_dir=str(root / "data"), device="cpu",
                      dtype="fp32", compile=False, sequence_length=32, micro_batch_size=2, total_batch_size=64,
                      max_steps=1, warmup_steps=0, max_lr=1e-3, validation_steps=0, hellaswag_samples=0,
                      checkpoint_dir=str(root / "run")))
    return {"root": root, "corpus": corpus, "data": root / "data", "run": root / "run",
            "checkpoint": next((root / "run").glob("checkpoint_*.bin")),
            "hellaswag": write_hellaswag_file(root / "hellaswag.jsonl")}


def _train_args(world: dict[str, Path]) -> list[str]:
    return ["train", "--model=gpt2-xxs", f"--dataset={world['corpus']}", f"--dataset-dir={world['data']}",
            "--device=cpu", "--dtype=fp32", "--no-compile", "--sequence-length=32", "--micro-batch-size=2",
            "--total-batch-size=64", "--max-steps=1", "--warmup-steps=0", "--validation-steps=0",
            "--hellaswag-samples=0"]


# Each command with one of its path options set to `{}`, run from an empty folder.
PATH_OPTIONS = {
    "sample --checkpoint": lambda w: ["sample", "--checkpoint={}", "--device=cpu", "Hello"],
    "eval --hellaswag-file": lambda w: ["eval", f"--checkpoint={w['checkpoint']}", "--device=cpu",
                                        "--hellaswag-file={}"],
    "export --export-dir": lambda w: ["export", f"--checkpoint={w['checkpoint']}", "--export-dir={}"],
    "export --model-card": lambda w: ["export", f"--checkpoint={w['checkpoint']}", "--export-dir=out",
                                      "--model-card={}"],
    "prepare_dataset --dataset": lambda w: ["prepare_dataset", "--dataset={}", "--dataset-dir=data"],
    "prepare_dataset --dataset-dir": lambda w: ["prepare_dataset", f"--dataset={w['corpus']}", "--dataset-dir={}"],
    "train --checkpoint-dir": lambda w: [*_train_args(w), "--checkpoint-dir={}"],
    "train --log-file": lambda w: [*_train_args(w), "--checkpoint-dir=run", "--log-file={}"],
    "plot LOG_FILE": lambda w: ["plot", "{}"],
}


def _run_from(folder: Path, args: list[str], value: str, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess:
    monkeypatch.chdir(folder)
    return cli(*[a.replace("{}", value) for a in args])


@pytest.mark.parametrize("option", PATH_OPTIONS)
@pytest.mark.parametrize("value", [f"{LONG_NAME}/x", LONG_PATH], ids=["300-byte name", "5000-byte path"])
def test_a_path_over_the_file_systems_limits_is_one_line(world: dict, tmp_path: Path, option: str, value: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = files_under(world["root"])
    result = _run_from(tmp_path, PATH_OPTIONS[option](world), value, monkeypatch)
    assert_one_line_error(result)
    assert "too long" in result.stderr or "not found" in result.stderr or "does not exist" in result.stderr
    assert list(tmp_path.iterdir()) == [] and files_under(world["root"]) == before


@pytest.mark.parametrize("option", PATH_OPTIONS)
def test_a_path_that_is_not_utf8_is_refused_before_anything_runs(world: dict, tmp_path: Path, option: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_from(tmp_path, PATH_OPTIONS[option](world), NOT_UTF8, monkeypatch)
    assert_one_line_error(result, "run-\\xff", "is not UTF-8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--checkpoint-dir", "--log-file", "--dataset-dir"])
@pytest.mark.parametrize("form", ["--option=", "--option ''"])
def test_an_empty_path_option_is_refused_not_read_as_the_current_folder(world: dict, tmp_path: Path, option: str,
                                                                        form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    extra = [f"{option}="] if form == "--option=" else [option, ""]
    monkeypatch.chdir(tmp_path)
    args = [a for a in _train_args(world) if not a.startswith(f"{option}=")]
    result = cli(*args, *extra, *([] if option == "--checkpoint-dir" else [f"--checkpoint-dir={tmp_path / 'run'}"]))
    assert_one_line_error(result, option, "empty")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_cache_variable_is_refused_not_read_as_the_current_folder(world: dict, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", "")
    result = _run_from(tmp_path, PATH_OPTIONS["sample --checkpoint"](world), str(world["checkpoint"]), monkeypatch)
    assert_one_line_error(result, "NANO_GPT_CACHE", "empty")
    assert list(tmp_path.iterdir()) == []


def test_a_model_card_that_is_a_device_is_refused_instead_of_read_forever(world: dict, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run_from(tmp_path, PATH_OPTIONS["export --model-card"](world), "/dev/zero", monkeypatch)
    assert_one_line_error(result, "/dev/zero", "not a file")
    assert list(tmp_path.iterdir()) == []


def _nano_gpt(*args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nano_gpt", *args], stderr=subprocess.PIPE, text=True, **popen)


def test_results_to_a_full_disk_are_one_line_and_a_failure(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval --json >/dev/full`, in this process: /dev/full takes the place of standard output."""
    from nano_gpt.cli import main

    monkeypatch.setattr(sys, "argv", ["nano-gpt", "eval", f"--checkpoint={world['checkpoint']}", "--device=cpu",
                                      "--dtype=fp32", f"--hellaswag-file={world['hellaswag']}", "--json"])
    err = io.StringIO()
    with open("/dev/full", "w") as full, contextlib.redirect_stdout(full), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as exit_:
            main()
    result = subprocess.CompletedProcess([], exit_.value.code, "", err.getvalue())
    assert_one_line_error(result, "cannot write to standard output", "No space left on device")


def test_a_closed_standard_output_is_refused_before_anything_runs(world: dict, tmp_path: Path) -> None:
    process = _nano_gpt("export", f"--checkpoint={world['checkpoint']}", f"--export-dir={tmp_path / 'out'}",
                        stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    _, err = process.communicate(timeout=120)
    assert_one_line_error(subprocess.CompletedProcess([], process.returncode, "", err), "standard output is closed")
    assert list(tmp_path.iterdir()) == []  # fd 1 was never reused for a file of ours


def test_ctrl_c_while_starting_is_a_quiet_exit_130(world: dict) -> None:
    # A long sample, so that the signal never meets a command already exiting (torch's exit handlers).
    process = _nano_gpt("sample", f"--checkpoint={world['checkpoint']}", "--device=cpu", "--max-length=20000",
                        "--num-sequences=1", "Hello", stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # past the interpreter's own start, into loading the CLI, torch or the model
    if process.poll() is not None:
        pytest.skip("the command finished before Ctrl-C")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err and "error" not in err, err


# --- the smaller ones: a license the Hub does not know, another --model on resume, HellaSwag files, changed shards

@pytest.mark.parametrize("license", ["mit-ish", "other", "other:Not A Slug"])
def test_a_license_the_hub_does_not_know_is_refused_before_exporting(world: dict, tmp_path: Path, license: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("export", f"--checkpoint={world['checkpoint']}", "--export-dir=out", f"--license={license}")
    assert_one_line_error(result, f"--license={license}", "other:NAME")
    assert list(tmp_path.iterdir()) == []


def test_a_license_of_its_own_is_other_with_its_name() -> None:
    from nano_gpt import GPTConfig
    from nano_gpt.model_card import CardFacts, render_model_card

    card = render_model_card(CardFacts(config=GPTConfig(), parameters=1), name="x", license="other:my-license-1.0")
    assert "license: other\n" in card and "license_name: my-license-1.0\n" in card


def test_resuming_with_another_model_says_so_and_records_the_checkpoints(world: dict, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    args = [a for a in _train_args(world) if not a.startswith(("--model=", "--max-steps="))]
    result = cli(*args, "--model=gpt2-xs", "--max-steps=2", f"--checkpoint-dir={run}", "--resume=auto")
    assert result.returncode == 0, result.stderr
    assert "--model=gpt2-xs differs from the checkpoint's model gpt2-xxs: resuming gpt2-xxs" in result.stderr
    saved = torch.load(run / "checkpoint_000001.bin", weights_only=True)
    assert saved["train_config"]["model"] == "gpt2-xxs" and "model gpt2-xxs -> gpt2-xs" not in result.stderr


def test_a_hellaswag_file_with_a_byte_order_mark_reads_as_without(world: dict, tmp_path: Path) -> None:
    from nano_gpt.eval.hellaswag import load_hellaswag

    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + world["hellaswag"].read_bytes())
    assert load_hellaswag(marked) == load_hellaswag(world["hellaswag"])


def test_a_hellaswag_ending_longer_than_the_context_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from nano_gpt import GPT, GPTConfig
    from nano_gpt.eval.hellaswag import HellaSwagExample, evaluate_hellaswag

    model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=32))
    long = " ".join(["word"] * 40)
    examples = [HellaSwagExample("A man", ("sits.", long, "runs.", "eats."), 0),
                HellaSwagExample("A woman", ("sits.", "runs.", "eats.", "reads."), 0)]
    with caplog.at_level("WARNING"):
        result = evaluate_hellaswag(model, examples, "cpu")
    assert result.total == 2
    assert [r.getMessage() for r in caplog.records if "longer than the model's context" in r.getMessage()] == [
        "1 HellaSwag example (the first: 1) has an ending longer than the model's context of 16 tokens; its tail "
        "was cut, so it is scored on part of it"]


def test_resuming_on_shards_that_changed_since_the_checkpoint_warns(world: dict, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from nano_gpt.data.loader import ShardLoader

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(documents(100, words=40)))
    prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "data", validation_tokens=0, num_workers=1)
    state = ShardLoader(tmp_path / "data", str(corpus), "train", 2, 16).state_dict()
    corpus.write_text("\n\n".join(documents(100, words=40, seed=1)))
    prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "data", validation_tokens=0, num_workers=1,
                    force=True)
    with caplog.at_level("WARNING"):
        ShardLoader(tmp_path / "data", str(corpus), "train", 2, 16).load_state_dict(state)
    assert any("the train shards changed since the checkpoint" in r.getMessage() for r in caplog.records)
