"""What a run reports: the per-step line, FLOPs utilisation, and a JSON-lines log for plots."""

import json
from pathlib import Path

import torch

from nano_gpt.config import GPTConfig

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, matched against the device name.
# More specific names first ("H100 PCIe" before "H100").
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12),
    ("L4", 121e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device: torch.device) -> float | None:
    """The detected GPU's own peak, or None where unknown (CPUs, MPS, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(config: GPTConfig, n_params: int, sequence_length: int) -> int:
    """Training FLOPs per token: 6N for the matmuls' forward and backward, plus attention's
    12 * n_layer * n_embd * T (PaLM appendix B). N excludes the position embeddings (a lookup)."""
    return 6 * n_params + 12 * config.n_layer * config.n_embd * sequence_length


def step_line(step: int, loss: float, norm: float, dt_ms: float, tok_per_sec: float, lr: float,
              mfu: float | None) -> str:
    line = f"step: {step} | loss: {loss:.4f} | norm: {norm:.4f} | dt: {dt_ms:.2f}ms | tok/sec: {tok_per_sec:.2f} | lr: {lr:.6f}"
    return line if mfu is None else f"{line} | mfu: {100 * mfu:.2f}%"


def _step(line: str) -> float:
    """A record's step; a line torn by a kill mid-write counts as past any checkpoint, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class JsonlLog:
    """Append-only JSON-lines records (`kind`, `step`, ...) that `nano-gpt plot` reads.

    On resume, records after the checkpoint's step (written by the interrupted run after its last
    checkpoint) are dropped, so the log reads as one run.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)

    def write(self, kind: str, step: int, **fields: object) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **fields}) + "\n")
