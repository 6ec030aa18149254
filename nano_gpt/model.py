"""GPT-2: causal self-attention, the MLP, the pre-LayerNorm block and the model (config in `nano_gpt.config`).

Parameter names follow Hugging Face's GPT-2 keys (`transformer.h.0.attn.c_attn.weight`, ...), so
importing weights is a key map plus a transpose of the Conv1D weights (see `nano_gpt.hf`).
Shapes: B batch, T sequence length, C n_embd, nh heads, hs head size, V vocabulary.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from nano_gpt.config import PRESETS, GPTConfig
from nano_gpt.fused_loss import linear_cross_entropy
from nano_gpt.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "PRESETS", "Block", "CausalSelfAttention", "MLP"]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, input_pos: int | torch.Tensor = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(input_pos, k, v)  # (B, nh, input_pos + T, hs)
            # A single new token may see every cached position; a chunk after cached positions needs the
            # causal mask shifted by them (a first chunk is plain causal, which keeps the flash kernel).
            if mask is None and T > 1 and input_pos > 0:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=x.device).tril(input_pos)
        if mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE_INIT = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, input_pos: int | torch.Tensor = 0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, input_pos, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied input and output embeddings
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation; residual projections are scaled so the residual stream's variance
        does not grow with depth (two additions per layer)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE_INIT", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (tied weights once); without position embeddings if asked, as in the paper."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if exclude_embeddings else n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        input_pos: int = 0,
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits (B, T, V), loss) for token ids idx (B, T), as nanoGPT's `logits, loss = model(x, y)`: the loss is
        the mean cross-entropy against targets (B, T), ignoring targets of -1, and None without targets.

        Training passes `return_logits=False`: the loss then comes from `linear_cross_entropy`, which never holds
        the (B * T, V) logits (412 MB at 2,048 tokens in fp32), and the logits are None. It is a keyword of
        `forward`, not a method of its own, so that DDP, FSDP and `torch.compile`, which wrap `forward`, see it.
        With `caches` (one per layer, see `new_kv_caches`), idx holds the tokens at positions
        input_pos..input_pos+T and earlier positions are read from the cache.
        """
        x = self.hidden_states(idx, caches, input_pos)  # (B, T, C)
        # A quantized head (`nano_gpt.quantize`) has no float weight for the fused loss: it takes the logits path.
        if targets is not None and not return_logits and isinstance(self.lm_head, nn.Linear):
            return None, linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.reshape(-1), ignore_index=-1)
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        # The softmax over the vocabulary in fp32, as the fused loss computes it, also under autocast.
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1), ignore_index=-1)

    def hidden_states(
        self,
        idx: torch.Tensor,
        caches: list[KVCache] | None = None,
        input_pos: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final LayerNorm's output (B, T, C), before the vocabulary projection.

        `positions` (B, T) and a boolean attention `mask` (B, 1, T, T) replace the default positions and
        causal mask; HellaSwag uses them to score four endings of one context in a single row.
        """
        B, T = idx.shape
        if positions is None:
            if input_pos + T > self.config.block_size:
                raise ValueError(f"sequence of length {input_pos + T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(input_pos, input_pos + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if caches is None else caches[i], input_pos, mask)
        return self.transformer.ln_f(x)  # (B, T, C)

    def new_kv_caches(self, batch_size: int, max_length: int | None = None) -> list[KVCache]:
        """One preallocated cache per layer, on the model's device and dtype (the embedding's: a quantized LM head
        is int8)."""
        c, p = self.config, self.transformer.wte.weight
        max_length = max_length or c.block_size
        return [KVCache(batch_size, c.n_head, max_length, c.head_size, p.device, p.dtype) for _ in range(c.n_layer)]

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike) -> "GPT":
        """A GPT with pretrained weights, on the CPU in fp32 and in eval mode: a Hub name or id ("gpt2",
        "openai-community/gpt2-medium"), a Hugging Face model folder, or a checkpoint file (nano-gpt's or a peer
        project's), as nanoGPT's and build-nanogpt's `GPT.from_pretrained("gpt2")`."""
        return _load_pretrained(os.fspath(name_or_path))

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """nanoGPT's `model.generate`: idx (B, T) continued by `max_new_tokens` tokens sampled with torch's global
        random generator, as a (B, T + max_new_tokens) tensor; `top_k` keeps the k most likely tokens.

        It runs `nano_gpt.generate.generate` (KV cache, no end-of-text stop, GPT-2's 50,257 token ids); call that
        for top-p, greedy decoding, a seeded generator, another vocabulary or streaming. As in nanoGPT's, past
        block_size the context slides: each new token sees the last block_size tokens.
        """
        from nano_gpt.generate import generate  # generate.py imports this module

        rows = generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, eos_token=None)
        return torch.tensor(rows, dtype=torch.long, device=idx.device)  # (B, T + max_new_tokens)


def _load_pretrained(name_or_path: str) -> GPT:
    """The one place `GPT.from_pretrained` reaches the loaders; imported here, as the loaders import this
    module and `model.py` holds no file or conversion code."""
    from nano_gpt.checkpoint import load_model

    return load_model(name_or_path)
