"""Pick the torch device, and say clearly when the one asked for is not there."""

import contextlib
from pathlib import Path

import torch

from nano_gpt.errors import NanoGPTError


def auto_device() -> str:
    """cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a `--device` value ("auto", "cpu", "cuda", "cuda:1", "mps") into an available device."""
    if name == "auto":
        return torch.device(auto_device())
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise NanoGPTError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NanoGPTError(f"--device={name} but CUDA is not available here; use --device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NanoGPTError(f"--device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise NanoGPTError(f"--device={name} but MPS is not available here; use --device=cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise NanoGPTError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for `dtype` on `device`, or nothing for fp32 / None."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _cpu_has_amx() -> bool:
    """Intel AMX tiles (Sapphire Rapids and later) are what make bf16 matmuls faster than fp32 on a CPU."""
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "amx_bf16" in cpuinfo.read_text()


def default_dtype(device: torch.device) -> torch.dtype:
    """The fastest precision that trains well on `device`: bf16 on CUDA cards that support it, fp16 (with a
    grad scaler) on older ones, fp32 on MPS. On CPUs, bf16 only with AMX: with AVX512-BF16 alone, bf16
    matmuls measured 150 GFLOP/s against fp32's 208 on a 2-core Xeon (docs/benchmarks.md)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _cpu_has_amx():
        return torch.bfloat16
    return torch.float32


def default_compile(device: torch.device) -> bool:
    """torch.compile where it works and pays off; MPS support is incomplete."""
    return device.type in ("cuda", "cpu")
