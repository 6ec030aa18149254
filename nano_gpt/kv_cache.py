"""A key/value cache with preallocated buffers, so each generated token costs one position."""

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer, written in place at `input_pos`.

    Buffers are allocated once at the maximum length, so decoding never reallocates or
    concatenates (and a compiled decode step sees fixed shapes).
    """

    def __init__(
        self, batch_size: int, n_head: int, max_length: int, head_size: int,
        device: torch.device | str | None = None, dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_length, head_size)  # (B, nh, T_max, hs)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, input_pos: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions input_pos..input_pos+T; return all keys/values so far.

        With `input_pos` a tensor of T positions (the compiled decode step), k and v are written there and
        the whole buffers are returned, so shapes never change with the position: the caller masks the
        positions not written yet.
        """
        if isinstance(input_pos, torch.Tensor):
            self.k.index_copy_(2, input_pos, k)
            self.v.index_copy_(2, input_pos, v)
            return self.k, self.v  # (B, nh, T_max, hs)
        end = input_pos + k.shape[2]
        self.k[:, :, input_pos:end] = k
        self.v[:, :, input_pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, end, hs)
