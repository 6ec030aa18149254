"""Training settings as one typed dataclass, with each preset's GPT-2/GPT-3-paper hyperparameters."""

import dataclasses
from dataclasses import dataclass

import torch

from nano_gpt.data import DEFAULT_DATASET_DIR
from nano_gpt.errors import NanoGPTError


@dataclass(frozen=True)
class PresetRecipe:
    total_batch_size: int  # tokens per optimizer step
    max_lr: float
    warmup_steps: int
    max_steps: int


# gpt2: 2**19 tokens per step, 19,073 steps = 10B tokens, 715 warmup steps, max lr 6e-4 (GPT-3 paper,
# table 2.1, for the same sizes). Laptop presets use small batches and short schedules.
RECIPES: dict[str, PresetRecipe] = {
    "gpt2": PresetRecipe(524_288, 6e-4, 715, 19_073),
    "gpt2-medium": PresetRecipe(524_288, 3e-4, 715, 19_073),
    "gpt2-large": PresetRecipe(524_288, 2.5e-4, 715, 19_073),
    "gpt2-xl": PresetRecipe(1_048_576, 2e-4, 715, 9_537),
    "gpt2-xs": PresetRecipe(32_768, 1e-3, 100, 2_000),
    "gpt2-xxs": PresetRecipe(8_192, 3e-3, 50, 1_000),
}

DTYPES: dict[str, torch.dtype | None] = {
    "auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}


@dataclass(frozen=True)
class TrainConfig:
    model: str = "gpt2"
    pretrained: str | None = None  # fine-tune from these weights instead of a random init
    dataset: str = "finewebedu"
    dataset_dir: str = str(DEFAULT_DATASET_DIR)
    device: str = "auto"
    sequence_length: int = 1024
    micro_batch_size: int = 16
    total_batch_size: int | None = None  # None: the preset's
    max_steps: int | None = None
    warmup_steps: int | None = None
    max_lr: float | None = None
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_steps: int = 250
    validation_steps: int = 20
    hellaswag_samples: int | None = None  # None: all; 0: off
    hellaswag_file: str | None = None
    checkpoint_steps: int = 5000
    checkpoint_dir: str = "checkpoints"
    log_file: str | None = None  # None: <checkpoint_dir>/train_log.jsonl
    compile: bool | None = None  # None: where it helps on this device
    dtype: str = "auto"
    seed: int = 1337
    shuffle: bool = True
    resume: str | None = None  # a checkpoint path, or "auto" for the newest in checkpoint_dir
    stop_at_step: int | None = None  # stop (with a checkpoint) after this step; the schedule stays max_steps long

    def resolved(self) -> "TrainConfig":
        """Fill what was left to the preset; validate what a user can get wrong."""
        if self.model not in RECIPES and self.pretrained is None:
            raise NanoGPTError(f"unknown model {self.model!r}; choose one of: {', '.join(RECIPES)}")
        if self.dtype not in DTYPES:
            raise NanoGPTError(f"unknown --dtype={self.dtype}; choose one of: {', '.join(DTYPES)}")
        recipe = RECIPES.get(self.model, RECIPES["gpt2"])
        def preset(value: float | None, default: float) -> float:
            return default if value is None else value  # an explicit 0 stays 0, and is refused below

        filled = dataclasses.replace(
            self,
            total_batch_size=preset(self.total_batch_size, recipe.total_batch_size),
            max_steps=preset(self.max_steps, recipe.max_steps),
            warmup_steps=preset(self.warmup_steps, recipe.warmup_steps),
            max_lr=preset(self.max_lr, recipe.max_lr),
            log_file=self.log_file or f"{self.checkpoint_dir}/train_log.jsonl",
        )
        for name in ("sequence_length", "micro_batch_size", "total_batch_size", "max_steps", "eval_steps",
                     "checkpoint_steps", "max_lr"):
            if getattr(filled, name) <= 0:
                raise NanoGPTError(f"--{name.replace('_', '-')} must be positive")
        for name in ("warmup_steps", "validation_steps", "hellaswag_samples"):
            if (getattr(filled, name) or 0) < 0:
                raise NanoGPTError(f"--{name.replace('_', '-')} must not be negative")
        if filled.warmup_steps >= filled.max_steps:
            raise NanoGPTError(f"--warmup-steps={filled.warmup_steps} must be smaller than --max-steps={filled.max_steps}")
        if not 0 <= filled.min_lr_ratio <= 1:
            raise NanoGPTError("--min-lr-ratio must be between 0 and 1")
        return filled

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that each step sees total_batch_size tokens."""
        per_micro_step = self.micro_batch_size * self.sequence_length * world_size
        if self.total_batch_size % per_micro_step:
            raise NanoGPTError(
                f"--total-batch-size={self.total_batch_size} is not divisible by micro batch x sequence length x "
                f"processes = {self.micro_batch_size} x {self.sequence_length} x {world_size} = {per_micro_step}; "
                "pick a total that is a multiple of it"
            )
        return self.total_batch_size // per_micro_step
