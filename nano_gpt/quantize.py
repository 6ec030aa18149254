"""Weight-only int8: each Linear's weights as int8 with one scale per output row, dequantised in the matmul.

Decoding one token streams every weight once, so its speed is the bytes of the weights over the memory's
bandwidth: int8 halves them against bf16 (a quarter of fp32). Activations stay in the model's precision;
only the stored weights lose precision, by at most half a step of each row's scale (max |w| / 127), which
moves GPT-2's validation loss by well under 1% (docs/benchmarks.md).

`quantize_int8(model)` swaps the attention and MLP projections and the LM head for `Int8Linear`. The LM
head is tied to the token embedding, which stays as it is: an embedding reads one row per token, so its
size costs no bandwidth, while the LM head reads all of it every token. Quantize before casting the model
to its decode precision (`model.to(dtype)` casts the scales and biases, never the int8 weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nano_gpt.model import GPT


class Int8Linear(nn.Module):
    """`nn.Linear` with weight (out, in) stored as int8 and a per-output-row scale: W ~ weight * scales[:, None]."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        # Symmetric per-row scales: zero stays exact, and each row uses all 255 levels of its own range.
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.register_buffer("weight", q)
        self.register_buffer("scales", scales.to(weight.dtype))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = self.scales.to(x.dtype)  # under autocast x may be bf16 while the buffers are fp32
        if x.device.type == "cpu":
            # torch's fused int8-weight GEMM: it reads the int8 bytes and scales in registers, never
            # materialising a float copy of the weight (which would cost the bandwidth it saves). Measured on
            # CPUs only; elsewhere the weight is dequantised for the matmul (correct, not faster).
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight, scales)  # (B*T, out)
            y = y.view(*x.shape[:-1], self.out_features)  # (..., out)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * scales
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


QUANTIZED = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # per block, and the LM head


def quantize_int8(model: GPT) -> GPT:
    """Replace `model`'s Linear layers (attention, MLP, LM head) by `Int8Linear`, in place; returns the model.

    For inference only (the int8 weights have no gradient): sampling, evaluation, serving. The token
    embedding keeps its precision and is no longer tied to the LM head.
    """
    for block in model.transformer.h:
        for name in QUANTIZED:
            parent_name, child = name.split(".")
            parent = getattr(block, parent_name)
            linear = getattr(parent, child)
            setattr(parent, child, Int8Linear(linear.weight, linear.bias))
    model.lm_head = Int8Linear(model.lm_head.weight, None)
    return model


def is_quantized(model: GPT) -> bool:
    return isinstance(model.lm_head, Int8Linear)
