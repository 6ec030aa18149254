"""Training settings as one typed dataclass, with each preset's GPT-2/GPT-3-paper hyperparameters.

Each field's help text lives here, in its metadata, and `nano-gpt train` builds one option per field from
it, so the command line and the library cannot drift apart.
"""

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from nano_gpt.config import PRESETS, SHAPE_FIELDS, GPTConfig
from nano_gpt.defaults import DEFAULT_DATASET_DIR, DTYPE_CHOICES, DTYPE_NAMES, FSDP_FP16, PARALLELISMS
from nano_gpt.errors import NanoGPTError
from nano_gpt.runlog import LOG_FILE
from nano_gpt.trackers import DEFAULT_PROJECT, TRACKERS, parse_report_to


@dataclass(frozen=True)
class PresetRecipe:
    total_batch_size: int  # tokens per optimizer step
    max_lr: float
    warmup_steps: int
    max_steps: int
    micro_batch_size: int = 16  # sequences per forward pass, unless --micro-batch-size says


# gpt2: 2**19 tokens per step, 19,073 steps = 10B tokens, 715 warmup steps, max lr 6e-4 (GPT-3 paper,
# table 2.1, for the same sizes). Laptop presets use small batches and short schedules; baby is nanoGPT's
# laptop recipe for character-level Shakespeare (batch 12 x 64, lr 1e-3, 100 warmup, 2,000 iterations, min lr
# 1e-4 = max x 0.1: config/train_shakespeare_char.py with its README's CPU overrides).
RECIPES: dict[str, PresetRecipe] = {
    "gpt2": PresetRecipe(524_288, 6e-4, 715, 19_073),
    "gpt2-medium": PresetRecipe(524_288, 3e-4, 715, 19_073),
    "gpt2-large": PresetRecipe(524_288, 2.5e-4, 715, 19_073),
    "gpt2-xl": PresetRecipe(1_048_576, 2e-4, 715, 9_537),
    "gpt2-xs": PresetRecipe(32_768, 1e-3, 100, 2_000),
    "gpt2-xxs": PresetRecipe(8_192, 3e-3, 50, 1_000),
    "baby": PresetRecipe(768, 1e-3, 100, 2_000, micro_batch_size=12),
}
SIZE_LIMITS = {"block_size": 1 << 20, "n_layer": 1 << 10, "n_head": 1 << 12, "n_embd": 1 << 16}  # as weights.py's

MAX_SEED = 2**64 - 1  # torch.manual_seed's range

OPTIMIZERS = ("adamw", "muon")  # --optimizer (see `nano_gpt.train.optim`)
LR_SCHEDULES = ("cosine", "wsd")  # --lr-schedule
MUON_TORCH = "2.9"  # the first torch with torch.optim.Muon
# Muon's default peak lr over AdamW's. With the update's RMS matched to AdamW's (0.2 x sqrt(max side), Moonshot's
# "Muon is scalable"), Muon still takes a larger step than AdamW at its best: see docs/benchmarks.md.
MUON_LR_RATIO = 4.0


RECIPE_RULE = ("a shape that is not a preset's trains with the recipe (batch, learning rate, warmup, steps) of the "
               "preset closest to it in n_layer x n_embd^2")


def recipe_for(model_config: GPTConfig) -> str:
    """The preset whose recipe suits a model of this shape: the preset with the same layers, heads and
    width, else the one closest in size (`RECIPE_RULE`: pretrained models and --n-layer/--n-embd come in many
    shapes)."""
    def size(c: GPTConfig) -> int:
        return c.n_layer * c.n_embd**2

    for name, preset in PRESETS.items():
        if (preset.n_layer, preset.n_head, preset.n_embd) == (model_config.n_layer, model_config.n_head,
                                                              model_config.n_embd):
            return name
    return min(RECIPES, key=lambda name: abs(math.log(size(PRESETS[name]) / size(model_config))))


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field with its command-line help (and any extra typer.Option settings) in its metadata."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class TrainConfig:
    model: str = _option("gpt2", f"Preset: {', '.join(RECIPES)} (nanoGPT's character-level laptop model).")
    n_layer: int | None = _option(None, "Layers, over the preset's (a new model only).")
    n_head: int | None = _option(None, "Attention heads, over the preset's; must divide --n-embd.")
    n_embd: int | None = _option(None, "Width, over the preset's.")
    block_size: int | None = _option(None, "Context length, over the preset's.")
    pretrained: str | None = _option(None, "Fine-tune from these weights (gpt2, a Hub id, a folder, or a checkpoint "
                                           "file) instead of a random init; the schedule follows their size.")
    dataset: str = _option("finewebedu", "A dataset: tinyshakespeare, finewebedu, hf:OWNER/NAME or local files, as "
                                         "`nano-gpt prepare_dataset` takes it; prepared first if it is not yet.")
    tokenizer: str = _option("gpt2", "The dataset's tokenizer: gpt2, char, or a tokenizer folder or Hub id (as "
                                     "`prepare_dataset --tokenizer`). A new model's vocabulary is its size.")
    prepare: bool = _option(True, "Prepare the dataset first when it is not prepared (--no-prepare: refuse instead).",
                            flag="--prepare/--no-prepare")
    dataset_dir: str = _option(str(DEFAULT_DATASET_DIR), "Where prepared shards live.")
    device: str = _option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    dtype: str = _option("auto", f"{DTYPE_CHOICES}. auto: bf16 on GPUs that have it (else fp16 with a grad "
                                 "scaler), fp32 on MPS, and on CPUs whichever of fp32 and bf16 measures faster.")
    compile: bool | None = _option(None, "torch.compile the model (default: on for CUDA and CPU, off on MPS).",
                                   flag="--compile/--no-compile")
    parallelism: str = _option("auto", "Under torchrun: ddp (every process holds the whole model) or fsdp (parameters, "
                                       "gradients and optimizer state sharded over the processes, for models that do "
                                       "not fit one GPU; checkpoints become folders). auto: ddp under torchrun.")
    activation_checkpointing: bool = _option(False, "Recompute each block's activations in the backward pass instead "
                                                    "of keeping them: about a third more compute for far less memory.",
                                             flag="--activation-checkpointing/--no-activation-checkpointing")
    sequence_length: int | None = _option(None, "Tokens per training sequence (default: the model's context).")
    micro_batch_size: int | None = _option(None, "Sequences per forward pass per process (default from the recipe: "
                                                 "16; 12 for baby).")
    total_batch_size: int | None = _option(None, "Tokens per optimizer step (gradient accumulation fills it); "
                                                 "default from the recipe (524,288 for gpt2).")
    max_steps: int | None = _option(None, "Optimizer steps; default from the recipe (19,073 for gpt2: 10B tokens).")
    warmup_steps: int | None = _option(None, "Linear warmup steps; default from the recipe (715 for gpt2).")
    max_lr: float | None = _option(None, "Peak learning rate; default from the recipe (6e-4 for gpt2).")
    min_lr_ratio: float = _option(0.1, "The schedule decays to max-lr x this (0 to 1).")
    weight_decay: float = _option(0.1, "AdamW weight decay on 2-D weights.")
    optimizer: str = _option("adamw", "adamw (GPT-2's recipe) or muon: Muon (momentum orthogonalised by Newton-Schulz, "
                                      f"torch >= {MUON_TORCH}) on the attention and MLP matrices, AdamW on "
                                      "embeddings, biases and LayerNorm gains.")
    lr_schedule: str = _option("cosine", "cosine: linear warmup, then cosine decay to max-lr x --min-lr-ratio. wsd: "
                                         "linear warmup, constant, then a linear decay over the last "
                                         "--decay-fraction of the steps.")
    decay_fraction: float = _option(0.3, "With --lr-schedule=wsd: the share of --max-steps spent decaying (0 to 1].")
    muon_lr: float | None = _option(None, "Muon's peak learning rate, on AdamW's scale (the update's RMS is matched "
                                          f"to AdamW's); default --max-lr x {MUON_LR_RATIO:g}.")
    muon_momentum: float = _option(0.95, "Muon's Nesterov momentum (0 to 1).")
    muon_weight_decay: float | None = _option(None, "Muon's decoupled weight decay; default --weight-decay.")
    grad_clip: float = _option(1.0, "Clip the global gradient norm to this (positive).")
    seed: int = _option(1337, "Seed for the initial weights and the data order.")
    shuffle: bool = _option(True, "Shuffle shard and document order each epoch.", flag="--shuffle/--no-shuffle")
    eval_steps: int = _option(250, "Evaluate (validation loss, HellaSwag, a sample) every N steps.")
    validation_steps: int = _option(20, "Validation batches per evaluation; 0 skips it.")
    hellaswag_samples: int | None = _option(
        None, "HellaSwag examples per evaluation (default all 10,042 when the file is cached or can be "
              "downloaded, else skipped with a warning; 0 skips it).", aliases=("--hellaswag_samples",))
    hellaswag_file: str | None = _option(None, "A local hellaswag_val.jsonl instead of the cached download.")
    checkpoint_dir: str = _option("checkpoints", "Where checkpoints and the log go; one run per folder.")
    checkpoint_steps: int = _option(5000, "Write a checkpoint every N steps (and at the end).")
    log_file: str | None = _option(None, f"JSON-lines log of every step and eval (default <checkpoint-dir>/{LOG_FILE}).")
    resume: str | None = _option(None, "Continue from a checkpoint file, or `auto` for the newest in --checkpoint-dir.")
    overwrite: bool = _option(False, "Start a new run in a --checkpoint-dir that holds another run, deleting its "
                                     "checkpoints and log.")
    stop_at_step: int | None = _option(None, "Stop with a checkpoint after this step, keeping the --max-steps "
                                             "schedule (resume later).")
    report_to: str | None = _option(None, f"Also send the log's records to experiment trackers: {', '.join(TRACKERS)} "
                                          "(comma-separated; each is an optional extra of the same name, see "
                                          "docs/training.md). Only rank 0 reports.")
    run_name: str | None = _option(None, "The run's name in the trackers (default: the --checkpoint-dir folder's name).")
    project: str = _option(DEFAULT_PROJECT, "The W&B or Trackio project the run goes to.")

    def validate(self) -> None:
        """Refuse what cannot train: unknown names, and numbers out of range or not finite."""
        if self.model not in RECIPES and self.pretrained is None:
            raise NanoGPTError(f"unknown model {self.model!r}; choose one of: {', '.join(RECIPES)}")
        shaped = [f"--{_flag(name)}" for name in SHAPE_FIELDS if getattr(self, name) is not None]
        if shaped and self.pretrained is not None:
            raise NanoGPTError(f"{', '.join(shaped)} shape a new model; --pretrained weights keep their own shape")
        for name in SHAPE_FIELDS:
            value = getattr(self, name)
            if value is not None and not 1 <= value <= SIZE_LIMITS[name]:
                raise NanoGPTError(f"--{_flag(name)}={value} must be between 1 and {SIZE_LIMITS[name]:,}")
        if self.pretrained is None:
            self.model_config(64)  # divisibility
        if self.dtype not in DTYPE_NAMES:
            raise NanoGPTError(f"unknown --dtype={self.dtype}; choose {DTYPE_CHOICES}")
        if self.parallelism not in PARALLELISMS:
            raise NanoGPTError(f"unknown --parallelism={self.parallelism}; choose {', '.join(PARALLELISMS)}")
        if self.optimizer not in OPTIMIZERS:
            raise NanoGPTError(f"unknown --optimizer={self.optimizer}; choose {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise NanoGPTError(f"unknown --lr-schedule={self.lr_schedule}; choose {', '.join(LR_SCHEDULES)}")
        if self.optimizer == "muon" and self.parallelism == "fsdp":
            raise NanoGPTError("--optimizer=muon does not work with --parallelism=fsdp: Newton-Schulz orthogonalises "
                               "whole matrices and FSDP gives each process a slice of them; use --parallelism=ddp")
        for name in ("sequence_length", "micro_batch_size", "total_batch_size", "max_steps", "eval_steps",
                     "checkpoint_steps", "max_lr", "grad_clip", "muon_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise NanoGPTError(f"--{_flag(name)}={value} must be a positive number")
        for name in ("warmup_steps", "validation_steps", "hellaswag_samples", "weight_decay", "stop_at_step",
                     "muon_weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise NanoGPTError(f"--{_flag(name)}={value} must be zero or more")
        if not (math.isfinite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            raise NanoGPTError(f"--min-lr-ratio={self.min_lr_ratio} must be between 0 and 1")
        if not (math.isfinite(self.decay_fraction) and 0 < self.decay_fraction <= 1):
            raise NanoGPTError(f"--decay-fraction={self.decay_fraction} must be more than 0 and at most 1")
        if not (math.isfinite(self.muon_momentum) and 0 <= self.muon_momentum < 1):
            raise NanoGPTError(f"--muon-momentum={self.muon_momentum} must be at least 0 and below 1")
        if not 0 <= self.seed <= MAX_SEED:
            raise NanoGPTError(f"--seed={self.seed} must be between 0 and 2**64 - 1")
        for f in dataclasses.fields(self):  # counts past int64 overflow the tensors they end up in
            value = getattr(self, f.name)
            if f.name != "seed" and type(value) is int and value >= 2**63:
                raise NanoGPTError(f"--{_flag(f.name)}={value} is too large; at most 2**63 - 1")
        parse_report_to(self.report_to)
        for name in ("dataset", "dataset_dir", "checkpoint_dir", "log_file", "hellaswag_file", "pretrained", "resume"):
            value = getattr(self, name)
            if value is not None and not value.strip():  # Path("") is ".": an empty value would mean this folder
                raise NanoGPTError(f"--{_flag(name)}= is empty; name a file or folder (. for this one)")
        for name in ("checkpoint_dir", "log_file"):  # the two paths a run creates: refused before it creates either
            value = getattr(self, name)
            if value is not None and (len(os.fsencode(value)) > _PATH_MAX or
                                      max(len(os.fsencode(part)) for part in value.split("/")) > _NAME_MAX):
                raise NanoGPTError(f"--{_flag(name)} is too long for the file system (at most {_NAME_MAX} bytes a "
                                   f"name, {_PATH_MAX} a path)")
        if self.parallelism == "fsdp" and self.dtype == "fp16":  # refused before any process group is joined
            raise NanoGPTError(FSDP_FP16)
        if self.overwrite and self.resume is not None:
            raise NanoGPTError("--overwrite starts a new run and --resume continues one; pass only one")

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The shape of a new model: --model's preset with the shape flags over it, and `vocab_size` rows."""
        overrides = {name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None}
        shape = dataclasses.replace(PRESETS[self.model], **{**overrides, "n_head": 1})  # n_head checked below
        n_head = overrides.get("n_head", PRESETS[self.model].n_head)
        if shape.n_embd % n_head:
            raise NanoGPTError(f"--n-embd={shape.n_embd} is not divisible by --n-head={n_head}; each head takes an "
                               "equal share of the width")
        return dataclasses.replace(shape, n_head=n_head, vocab_size=vocab_size)

    def resolved(self, recipe: str | None = None, block_size: int | None = None) -> "TrainConfig":
        """Validated, with what was left open filled from `recipe` (default: --model's) and the model's context
        `block_size` (the sequence length)."""
        self.validate()
        defaults = RECIPES[recipe or self.model]

        def fill(value: float | None, default: float) -> float:
            return default if value is None else value

        max_lr = fill(self.max_lr, defaults.max_lr)
        filled = dataclasses.replace(
            self,
            micro_batch_size=fill(self.micro_batch_size, defaults.micro_batch_size),
            sequence_length=fill(self.sequence_length, block_size or self.model_config(64).block_size),
            total_batch_size=fill(self.total_batch_size, defaults.total_batch_size),
            max_steps=fill(self.max_steps, defaults.max_steps),
            warmup_steps=fill(self.warmup_steps, defaults.warmup_steps),
            max_lr=max_lr,
            muon_lr=fill(self.muon_lr, MUON_LR_RATIO * max_lr),
            muon_weight_decay=fill(self.muon_weight_decay, self.weight_decay),
            log_file=_followed(self.log_file or f"{self.checkpoint_dir}/{LOG_FILE}"),
        )
        if filled.warmup_steps >= filled.max_steps:
            raise NanoGPTError(f"--warmup-steps={filled.warmup_steps} must be smaller than --max-steps={filled.max_steps}")
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

    @property
    def trackers(self) -> tuple[str, ...]:
        """The experiment trackers --report-to names."""
        return parse_report_to(self.report_to)

    @property
    def last_step(self) -> int:
        """The last step this invocation runs: --stop-at-step, or the end of the schedule."""
        end = self.max_steps - 1
        return end if self.stop_at_step is None else min(end, self.stop_at_step)


# Linux's and macOS's limits on a name and a path, in bytes (os.pathconf would need a folder that exists).
_NAME_MAX, _PATH_MAX = 255, 4096


def _followed(path: str) -> str:
    """A symbolic link's target, else `path` as given: the log is written, and locked, where the link points, and
    the link stays."""
    return os.path.realpath(path) if os.path.islink(path) else path


def _flag(name: str) -> str:
    return name.replace("_", "-")
