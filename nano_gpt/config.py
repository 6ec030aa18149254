"""GPTConfig: the GPT-2 architecture as a small dataclass, and its named presets.

Kept apart from the model so that weight conversion (`nano_gpt.hf`) and loading code can speak about a
model's shape without importing the model.
"""

import dataclasses
from dataclasses import dataclass

from nano_gpt.errors import NanoGPTError

# The prompt of the GPT-2 tutorial: `sample`'s default, training's samples, the model card's usage snippet.
SAMPLE_PROMPT = "Hello, I'm a language model,"


@dataclass(frozen=True)
class GPTConfig:
    block_size: int = 1024  # maximum context length
    vocab_size: int = 50304  # 50257 BPE tokens padded to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_preset(cls, name: str, **overrides: int) -> "GPTConfig":
        """A named preset (see `PRESETS`), optionally with fields replaced."""
        if name not in PRESETS:
            raise NanoGPTError(f"unknown model {name!r}; choose one of: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        return cls(**d)


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "gpt2-xs": GPTConfig(n_layer=10, n_head=8, n_embd=512),  # ~58M, for laptops (head size 64 as in GPT-2)
    "gpt2-xxs": GPTConfig(n_layer=4, n_head=4, n_embd=64),  # ~3M (mostly embeddings), for tests
    # nanoGPT's character-level Shakespeare on a laptop CPU (its README): 4 layers, 4 heads, 128 wide, context 64;
    # its vocabulary comes from the dataset (65 characters for TinyShakespeare), as every fresh run's does.
    "baby": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128),
}
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")  # what `train --n-layer ...` may set over a preset
