"""What a run reports per step: the printed line and FLOPs utilisation."""

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
