"""Refuse work that cannot fit in memory before allocating it.

`sample --num-sequences=5000000000` would otherwise end in a MemoryError traceback, or worse, in the kernel's
OOM killer taking the process (and whatever shares the machine) down with no message at all. The estimates
count the large buffers a command allocates at once (the KV cache, the logits and their copies); they are
meant to catch requests that are off by orders of magnitude, not to predict the peak to the byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None


def _linux_available() -> int | None:
    """MemAvailable, lowered to what the cgroup (a container's limit) leaves, where there is one."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(Path(limit_file)), _read_int(Path(usage_file))
        if limit is not None and usage is not None and limit < 2**60 and available is not None:
            available = min(available, max(limit - usage, 0))
    return available


def available_bytes(device: torch.device) -> int | None:
    """Memory `device` can still give: free GPU memory on CUDA; on the CPU (and MPS, whose memory is the
    system's) what the operating system can give without swapping. None where it cannot be told."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    available = _linux_available()
    if available is None and hasattr(os, "sysconf"):
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return available


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def decode_bytes(config: GPTConfig, batch: int, prompt_length: int, total_length: int, dtype: torch.dtype,
                 vocab_size: int, sorts_vocabulary: bool) -> int:
    """What sampling `batch` sequences of `total_length` tokens allocates besides the weights: the KV cache,
    the prompt's activations, each step's logits (and, when `sorts_vocabulary` because no top-k cuts the
    candidates first, their sorted float copies), and the token ids."""
    item = torch.empty((), dtype=dtype).element_size()
    kv_cache = 2 * config.n_layer * batch * min(total_length, config.block_size) * config.n_embd * item
    # q, k, v, attention output, the MLP's 4x hidden and its activation, plus one score matrix per head
    prefill = batch * prompt_length * (14 * config.n_embd * item + config.n_head * prompt_length * 4)
    logits = batch * config.vocab_size * item
    if sorts_vocabulary:
        logits += batch * vocab_size * (item + 8 + 4 + 4)  # sorted values and indices, float, softmax
    tokens = batch * total_length * (8 + 40)  # the tensor, then the Python lists handed back
    return kv_cache + prefill + logits + tokens


def forward_bytes(config: GPTConfig, batch: int, sequence_length: int, dtype: torch.dtype) -> int:
    """What one forward pass with the loss over (batch, sequence_length) tokens allocates besides the weights:
    the logits with their float copy and gradient-free softmax, and one layer's activations at a time."""
    item = torch.empty((), dtype=dtype).element_size()
    tokens = batch * sequence_length
    return tokens * (config.vocab_size * (item + 4 + 4) + 14 * config.n_embd * item)


def check_fits(needed: int, device: torch.device, what: str, fix: str) -> None:
    """A one-line NanoGPTError when `needed` bytes are more than `device` has available."""
    available = available_bytes(device)
    if available is not None and needed > available:
        raise NanoGPTError(f"{what} needs about {format_bytes(needed)} of memory, more than the "
                           f"{format_bytes(available)} available on {device}; {fix}")
