"""One precision and device decision per command, made by the Runtime and said in the log."""

import json
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli, run_cli_here
from nano_gpt import load_pretrained
from nano_gpt.config import PRESETS
from nano_gpt.data import ShardLoader, prepare_dataset
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval import validation_loss
from nano_gpt.runtime import Runtime, resolve_device, resolve_dtype


def test_explicit_precisions_need_no_measurement() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("bf16", cpu, "train")[0] == torch.bfloat16
    assert resolve_dtype("float32", cpu, "eval")[0] == torch.float32  # earlier releases' spelling
    with pytest.raises(NanoGPTError, match="unknown --dtype=half"):
        resolve_dtype("half", cpu, "train")


def test_auto_on_a_cpu_asks_the_measurement_for_the_purpose(monkeypatch: pytest.MonkeyPatch) -> None:
    import nano_gpt.precision

    asked = []

    def fake(n_embd: int, vocab_size: int, purpose: str) -> tuple[torch.dtype, str]:
        asked.append((n_embd, vocab_size, purpose))
        return torch.bfloat16, "bf16 measured faster"

    monkeypatch.setattr(nano_gpt.precision, "cpu_precision", fake)
    config = PRESETS["gpt2-xxs"]
    runtime = Runtime.build("cpu", "auto", "decode", config)
    assert runtime.dtype == torch.bfloat16 and "bf16 measured faster" in runtime.describe()
    Runtime.build("cpu", "auto", "eval", config)
    assert asked == [(64, 50304, "decode"), (64, 50304, "train")]


def test_cuda_without_an_index_resolves_to_the_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.cuda.set_device and CUDA's memory queries refuse a bare "cuda" device: found on the first GPU run.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)  # torchrun: the local rank's GPU
    with pytest.raises(NanoGPTError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_or_unknown_device_is_a_user_error() -> None:
    with pytest.raises(NanoGPTError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(NanoGPTError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    with pytest.raises(NanoGPTError, match="unsupported device 'meta'"):
        resolve_device("meta")


def test_a_half_set_torchrun_environment_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(NanoGPTError, match="RANK is set but LOCAL_RANK or WORLD_SIZE"):
        Runtime.build("cpu", "fp32", torchrun=True)
    assert Runtime.build("cpu", "fp32").world_size == 1  # sample and eval never join a process group


def test_eval_runs_in_the_precision_asked_for_and_says_so(tmp_path: Path, tiny_hf_gpt2_vocab_dir: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The king shall ride at dawn. A horse, my lord! " * 300)
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=1000, num_workers=1)
    args = ("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}",
            "--validation-steps=2", "--batch-size=2", "--sequence-length=16", "--hellaswag-samples=0", "--json",
            "--device=cpu")
    bf16 = run_cli(*args, "--dtype=bf16")
    assert bf16.returncode == 0, bf16.stderr
    assert "precision bf16 (asked for with --dtype)" in bf16.stderr
    model = load_pretrained(str(tiny_hf_gpt2_vocab_dir))
    loader = ShardLoader(tmp_path / "ds", str(corpus), "validation", 2, 16)
    fp32 = validation_loss(model, loader, 2, "cpu", torch.float32)
    in_bf16 = validation_loss(model, loader, 2, "cpu", torch.bfloat16)
    assert in_bf16 != fp32  # so the comparison below can tell the precisions apart
    assert json.loads(bf16.stdout)["val_loss"] == pytest.approx(in_bf16, rel=1e-5)


def test_sample_and_eval_refuse_an_unknown_precision(tiny_hf_gpt2_vocab_dir: Path) -> None:
    for command in ("sample", "eval"):
        result = run_cli_here(command, f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--device=cpu", "--dtype=fp8")
        assert_one_line_error(result, "unknown --dtype=fp8", "auto, fp32, bf16 or fp16")
