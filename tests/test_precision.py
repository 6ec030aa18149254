import json
from pathlib import Path

import pytest
import torch

from nano_gpt import precision


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "machine_load", lambda: (0.0, 8))  # a quiet machine: verdicts are kept
    return tmp_path / precision.CACHE_FILE


def fake_timings(monkeypatch: pytest.MonkeyPatch, fp32_s: float, bf16_s: float) -> list[tuple]:
    """Replace the timer with fixed figures; returns the list of calls it receives."""
    calls: list[tuple] = []

    def measure(n_embd: int, vocab_size: int, purpose: str) -> dict[str, float]:
        calls.append((n_embd, vocab_size, purpose))
        return {"fp32_s": fp32_s, "bf16_s": bf16_s, "fp32_size": 4e9, "bf16_size": 2e9 if purpose == "decode" else 4e9}

    monkeypatch.setattr(precision, "_measure", measure)
    return calls


def test_the_verdict_is_measured_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_timings(monkeypatch, fp32_s=0.02, bf16_s=0.01)
    first = precision.cpu_precision(256, 50304, "train")
    second = precision.cpu_precision(256, 50304, "train")
    assert calls == [(256, 50304, "train")]
    assert first[0] == second[0] == torch.bfloat16
    assert f"measured, cached in {cache}" in first[1] and f"(cached in {cache})" in second[1]
    (key,) = json.loads(cache.read_text())
    assert "torch " + torch.__version__ in key and "n_embd 256" in key and "train" in key
    assert f"measured, cached in {cache}" in precision.cpu_precision(256, 50304, "train", remeasure=True)[1]
    assert len(calls) == 2
    precision.cpu_precision(256, 50304, "decode")  # another purpose is another verdict
    precision.cpu_precision(512, 50304, "train")  # and so is another shape
    assert len(calls) == 4 and len(json.loads(cache.read_text())) == 3


@pytest.mark.parametrize(
    ("fp32_s", "bf16_s", "expected"),
    [(0.02, 0.01, torch.bfloat16), (0.01, 0.02, torch.float32), (0.0105, 0.01, torch.float32)],  # last: within margin
)
@pytest.mark.parametrize("purpose", ["train", "decode"])
def test_the_verdict_follows_the_measured_figures(cache: Path, monkeypatch: pytest.MonkeyPatch, purpose: str,
                                                  fp32_s: float, bf16_s: float, expected: torch.dtype) -> None:
    fake_timings(monkeypatch, fp32_s, bf16_s)
    dtype, reason = precision.cpu_precision(64, 1000, purpose)
    assert dtype == expected
    if purpose == "train":  # 4e9 FLOPs in fp32_s and bf16_s seconds
        assert f"bf16 matmuls {4 / bf16_s:,.0f} vs fp32 {4 / fp32_s:,.0f} GFLOP/s" in reason
    else:
        assert f"bf16 weights {1e3 * bf16_s:.2f} vs fp32 {1e3 * fp32_s:.2f} ms" in reason


def test_a_real_measurement_at_a_tiny_shape_gives_a_verdict_and_its_figures(cache: Path) -> None:
    for purpose, unit in (("train", "GFLOP/s"), ("decode", "GB/s")):
        dtype, reason = precision.cpu_precision(32, 100, purpose)
        assert dtype in (torch.float32, torch.bfloat16) and unit in reason
    entries = json.loads(cache.read_text()).values()
    assert len(entries) == 2 and all(e["fp32_s"] > 0 and e["bf16_s"] > 0 for e in entries)


def test_an_unreadable_cache_file_is_measured_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.write_text("{half a fi")
    calls = fake_timings(monkeypatch, fp32_s=0.01, bf16_s=0.02)
    assert precision.cpu_precision(64, 1000, "train")[0] == torch.float32
    assert len(calls) == 1 and len(json.loads(cache.read_text())) == 1


def test_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(ValueError, match="decode"):
        precision.cpu_precision(64, 1000, "inference")
