"""The runtime of one command: the device (torchrun-aware), the precision, and the process group.

Every command builds one `Runtime` from its `--device` and `--dtype` and asks it, instead of deciding
again: which device, which precision and why, whether to compile, how to autocast, how to move a batch,
which rank this is. `--dtype=auto` means the same everywhere: bf16 on CUDA cards that support it (fp16
with a grad scaler on older ones), fp32 on MPS, and on a CPU whichever of fp32 and bf16 measured faster
at the model's own shapes (`nano_gpt.precision`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from nano_gpt import distributed
from nano_gpt.config import PRESETS, GPTConfig
from nano_gpt.defaults import DTYPE_CHOICES, DTYPE_NAMES
from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)

Purpose = Literal["train", "eval", "decode"]

# --dtype values: the short names, and the torch names that earlier releases took.
DTYPES: dict[str, torch.dtype | None] = {name: None if t is None else getattr(torch, t) for name, t in DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """fp32, bf16 or fp16: the name logs and checkpoints use."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for `dtype` on `device`, or nothing for fp32 / None."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """Turn a `--device` value ("auto", "cpu", "cuda", "cuda:1", "mps") into an available device; under
    torchrun (`local_rank` given) a CUDA process takes the GPU of its local rank."""
    if name == "auto":
        device = _auto_device()
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError) as e:
            raise NanoGPTError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NanoGPTError(f"--device={name} but CUDA is not available here; use --device=cpu or auto")
        if local_rank is not None:
            if name not in ("auto", "cuda"):
                raise NanoGPTError(f"--device={name} under torchrun: pass --device=cuda, and each process takes "
                                   "the GPU of its local rank")
            device = torch.device("cuda", local_rank)
        if device.index is None:  # torch.cuda.set_device and CUDA's memory queries need an index
            device = torch.device("cuda", torch.cuda.current_device())
        index = device.index
        if index >= torch.cuda.device_count():
            raise NanoGPTError(f"{device} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
                               + ("; lower --nproc_per_node" if local_rank is not None else ""))
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise NanoGPTError(f"--device={name} but MPS is not available here; use --device=cpu or auto")
        if local_rank is not None:
            raise NanoGPTError("torchrun needs cuda (NCCL) or cpu (gloo); MPS runs in one process")
    elif device.type != "cpu":
        raise NanoGPTError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str, device: torch.device, purpose: Purpose,
                  model_config: GPTConfig | None = None) -> tuple[torch.dtype, str]:
    """The precision for `--dtype=name` on `device`, and why it was chosen (for the log)."""
    if name not in DTYPES:
        raise NanoGPTError(f"unknown --dtype={name}; choose {DTYPE_CHOICES}")
    chosen = DTYPES[name]
    if chosen is not None:
        if chosen == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise NanoGPTError(f"--dtype={name}: this GPU has no bf16 support; use --dtype=fp16 or auto")
        return chosen, "asked for with --dtype"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: this GPU supports bf16"
        return torch.float16, "auto: this GPU has no bf16, so fp16 (with a grad scaler when training)"
    if device.type == "mps":
        return torch.float32, "auto: fp32 on MPS, where mixed-precision training is not reliable"
    from nano_gpt.precision import cpu_precision  # measures once per CPU and torch version, then reads a cache

    shape = model_config or PRESETS["gpt2"]
    dtype, reason = cpu_precision(shape.n_embd, shape.vocab_size, "decode" if purpose == "decode" else "train")
    return dtype, f"auto: {reason}"


@dataclass(frozen=True)
class Runtime:
    """Where and how one command computes; built once by `Runtime.build`."""

    device: torch.device
    dtype: torch.dtype
    dtype_reason: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    torchrun: bool = False  # started by torchrun: `join` joins its process group

    @classmethod
    def build(cls, device: str = "auto", dtype: str = "auto", purpose: Purpose = "train",
              model_config: GPTConfig | None = None, torchrun: bool = False) -> Runtime:
        """Resolve `--device`/`--dtype`; with `torchrun`, for this process's rank and local device (`join` then
        joins torchrun's process group, once the run's own checks have passed)."""
        ranks = distributed.torchrun_ranks() if torchrun else None
        torch_device = resolve_device(device, None if ranks is None else ranks.local_rank)
        torch_dtype, reason = resolve_dtype(dtype, torch_device, purpose, model_config)
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any matmul left in fp32
            torch.backends.cudnn.allow_tf32 = True
        if ranks is None:
            return cls(torch_device, torch_dtype, reason)
        return cls(torch_device, torch_dtype, reason, ranks.rank, ranks.local_rank, ranks.world_size, torchrun=True)

    def join(self) -> None:
        """Join torchrun's process group (NCCL on CUDA, gloo on CPU), if torchrun started this process."""
        if self.torchrun:
            distributed.init_process_group(self.device)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, prints and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    @property
    def compiles_by_default(self) -> bool:
        """torch.compile where it works and pays off; its MPS support is incomplete."""
        return self.device.type in ("cuda", "cpu")

    @property
    def has_fused_adamw(self) -> bool:
        return self.device.type in ("cuda", "cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (a disabled scaler)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def to_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Host tensors on the device; page-locked first on CUDA so the copy runs asynchronously."""
        if self.device.type == "cuda":
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)
        return tuple(t.to(self.device) for t in tensors)

    def sync(self) -> None:
        """Wait for queued device work, so wall-clock timings are true."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The random generators a resumed run must restore to draw the same numbers."""
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def describe(self) -> str:
        """One line for the log: what was chosen, and why the precision."""
        processes = f" | {self.world_size} processes" if self.distributed else ""
        return f"device {self.device} | precision {self.dtype_name} ({self.dtype_reason}){processes}"

    def close(self) -> None:
        distributed.destroy_process_group()
