"""`nano-gpt train`: the GPT-2 training recipe, on one device or under torchrun."""

import sys
from typing import Annotated, Optional

import typer

from nano_gpt.cli.common import DeviceOption
from nano_gpt.train import TrainConfig, train as run_training

_D = TrainConfig()


def train(
    model: Annotated[str, typer.Option(help="Preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-xs, gpt2-xxs.")] = _D.model,
    pretrained: Annotated[Optional[str], typer.Option(help="Fine-tune from these weights (name, Hub id or folder) instead of a random init.")] = None,
    dataset: Annotated[str, typer.Option(help="A dataset prepared with `nano-gpt prepare_dataset`.")] = _D.dataset,
    dataset_dir: Annotated[str, typer.Option(help="Where prepared shards live.")] = _D.dataset_dir,
    device: DeviceOption = _D.device,
    sequence_length: Annotated[int, typer.Option(help="Tokens per training sequence.")] = _D.sequence_length,
    micro_batch_size: Annotated[int, typer.Option(help="Sequences per forward pass per process.")] = _D.micro_batch_size,
    total_batch_size: Annotated[Optional[int], typer.Option(help="Tokens per optimizer step (gradient accumulation fills it); default from the preset (524,288 for gpt2).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Optimizer steps; default from the preset (19,073 for gpt2: 10B tokens).")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps; default from the preset (715 for gpt2).")] = None,
    max_lr: Annotated[Optional[float], typer.Option(help="Peak learning rate; default from the preset (6e-4 for gpt2).")] = None,
    min_lr_ratio: Annotated[float, typer.Option(help="The cosine decays to max-lr x this.")] = _D.min_lr_ratio,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on 2-D weights.")] = _D.weight_decay,
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this.")] = _D.grad_clip,
    eval_steps: Annotated[int, typer.Option(help="Evaluate (validation loss, HellaSwag, a sample) every N steps.")] = _D.eval_steps,
    validation_steps: Annotated[int, typer.Option(help="Validation batches per evaluation; 0 skips it.")] = _D.validation_steps,
    hellaswag_samples: Annotated[Optional[int], typer.Option("--hellaswag-samples", "--hellaswag_samples", help="HellaSwag examples per evaluation (default all 10,042; 0 skips it).")] = None,
    hellaswag_file: Annotated[Optional[str], typer.Option(help="A local hellaswag_val.jsonl instead of the cached download.")] = None,
    checkpoint_steps: Annotated[int, typer.Option(help="Write a checkpoint every N steps (and at the end).")] = _D.checkpoint_steps,
    checkpoint_dir: Annotated[str, typer.Option(help="Where checkpoints go.")] = _D.checkpoint_dir,
    log_file: Annotated[Optional[str], typer.Option(help="JSON-lines log of every step and eval (default <checkpoint-dir>/train_log.jsonl).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model (default: on for CUDA and CPU, off on MPS).")] = None,
    dtype: Annotated[str, typer.Option(help="auto (bf16 on recent GPUs and AMX CPUs, fp16 + grad scaler on older GPUs, else fp32), float32, bfloat16 or float16.")] = _D.dtype,
    seed: Annotated[int, typer.Option(help="Seed for the initial weights and the data order.")] = _D.seed,
    shuffle: Annotated[bool, typer.Option(help="Shuffle shard and document order each epoch.")] = _D.shuffle,
    resume: Annotated[Optional[str], typer.Option(help="Continue from a checkpoint file, or `auto` for the newest in --checkpoint-dir.")] = None,
    stop_at_step: Annotated[Optional[int], typer.Option(help="Stop with a checkpoint after this step, keeping the --max-steps schedule (resume later).")] = None,
) -> None:
    """Train GPT-2 from scratch (or fine-tune --pretrained weights) on a prepared dataset.

    Under `torchrun --nproc_per_node=N $(which nano-gpt) train ...` it trains with DDP. Ctrl-C writes a
    checkpoint and stops; `--resume=auto` continues exactly where it stopped.
    """
    config = TrainConfig(**{k: v for k, v in locals().items()})
    result = run_training(config)
    if result.main_process:
        print(f"last step: {result.last_step} | checkpoint: {result.checkpoint}")
    if result.interrupted:
        if result.main_process:
            print("stopped by Ctrl-C; continue with the same command plus --resume=auto", file=sys.stderr)
        raise typer.Exit(130)
