"""`nano-gpt eval`: HellaSwag accuracy and validation loss of pretrained weights or a checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from nano_gpt.cli.common import (
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    MetaOption,
    PretrainedOption,
    QuantizeOption,
    read_model,
)
from nano_gpt.defaults import DEFAULT_DATASET_DIR, Quantize
from nano_gpt.errors import NanoGPTError

if TYPE_CHECKING:
    from nano_gpt.eval import HellaSwagResult
    from nano_gpt.model import GPT

logger = logging.getLogger(__name__)


def eval_model(
    pretrained: PretrainedOption = None,
    checkpoint: CheckpointOption = None,
    meta: MetaOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = Quantize.none,
    dataset: Annotated[Optional[str], typer.Option(help="A dataset prepared with `nano-gpt prepare_dataset`, for the validation loss.")] = None,
    dataset_dir: Annotated[Path, typer.Option(help="Where prepared shards live.")] = DEFAULT_DATASET_DIR,
    validation_steps: Annotated[int, typer.Option(min=0, help="Mean loss over this many batches of the validation split; 0 skips it.")] = 20,
    sequence_length: Annotated[Optional[int], typer.Option(min=1, help="Tokens per validation sequence; default: the model's context.")] = None,
    hellaswag_samples: Annotated[Optional[int], typer.Option("--hellaswag-samples", "--hellaswag_samples", min=0, help="Score the first N HellaSwag examples (default all 10,042; 0 skips HellaSwag).")] = None,
    hellaswag_file: Annotated[Optional[Path], typer.Option(help="A local HellaSwag jsonl instead of the validation set downloaded into the cache.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="HellaSwag examples, or validation sequences, per forward pass.")] = 8,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")] = False,
    micro_batch_size: Annotated[Optional[int], typer.Option(min=1, hidden=True)] = None,  # the seed's --batch-size
    tasks: Annotated[Optional[str], typer.Option(help="lm-evaluation-harness tasks instead: NAME[,NAME] (hellaswag, arc_easy, piqa, ...) or task YAML files; needs `pip install 'nano-gpt[eval]'`.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="With --tasks: the first N examples of each task.")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option(min=0, help="With --tasks: examples shown before each question (default: the task's).")] = None,
) -> None:
    """Evaluate pretrained GPT-2 weights (default gpt2) or a training checkpoint.

    HellaSwag accuracy (acc: the ending with the lowest total loss, acc_norm: the lowest loss per token) and, with --dataset, the mean validation loss. --debug logs the running accuracy after every example.
    """
    from nano_gpt.data import ShardLoader
    from nano_gpt.eval import evaluate_hellaswag, load_hellaswag, validation_loss
    from nano_gpt.eval.validation import steps_within_split
    from nano_gpt.memory import check_fits, forward_bytes
    from nano_gpt.runtime import Runtime
    from nano_gpt.tokenizer import (CharTokenizer, describe_tokenizer, same_tokenizer, tokenizer_record,
                                    tokenizer_spec)

    batch_size = batch_size if micro_batch_size is None else micro_batch_size
    if tasks is not None:
        if dataset is not None or hellaswag_file is not None or hellaswag_samples is not None:
            raise NanoGPTError("--tasks runs lm-evaluation-harness tasks only; run --dataset or --hellaswag-* apart")
        _eval_tasks(pretrained, checkpoint, device, dtype, quantize, tasks, batch_size, limit, num_fewshot, json_output)
        return
    if limit is not None or num_fewshot is not None:
        raise NanoGPTError("--limit and --num-fewshot go with --tasks")
    loaded = read_model(pretrained, checkpoint, meta=meta)
    model, tokenizer = loaded.model, loaded.tokenizer()
    record = tokenizer_record(tokenizer)
    if isinstance(tokenizer, CharTokenizer) and hellaswag_samples != 0:
        # HellaSwag's text holds characters a small character vocabulary lacks, and its scores compare to GPT-2's.
        if hellaswag_samples is not None or hellaswag_file is not None:
            raise NanoGPTError(f"HellaSwag needs a tokenizer that encodes any text; this model uses "
                               f"{describe_tokenizer(record)}: pass --hellaswag-samples=0")
        logger.info("hellaswag: skipped for a character-level model (%s)", describe_tokenizer(record))
        hellaswag_samples = 0
    # The same precision decision as validation inside training, so the two val_loss figures agree.
    runtime = Runtime.build(device, dtype, "eval", model.config)
    logger.info("evaluating on %s%s", runtime.describe(), " | int8 weights" if quantize == "int8" else "")
    _quantize(model, quantize)
    examples = None if hellaswag_samples == 0 else load_hellaswag(hellaswag_file, hellaswag_samples)
    model.to(runtime.device)
    loader = None
    if validation_steps > 0 and dataset is None:
        logger.info("validation loss: skipped; pass --dataset=NAME (prepared by `nano-gpt prepare_dataset`) to measure it")
    elif validation_steps > 0:
        T = sequence_length or model.config.block_size
        if T > model.config.block_size:
            raise NanoGPTError(f"--sequence-length={T} exceeds the model's context of {model.config.block_size} tokens")
        check_fits(forward_bytes(model.config, batch_size, T, runtime.dtype), runtime.device,
                   f"a validation batch of {batch_size:,} x {T} tokens", "lower --batch-size or --sequence-length")
        # The dataset as prepared with the model's own tokenizer (each tokenizer's shards have their own folder).
        loader = ShardLoader(dataset_dir, dataset, "validation", batch_size, T, tokenizer=tokenizer_spec(record))
        if not same_tokenizer(record, loader.tokenizer) or model.config.vocab_size < record["n_vocab"]:
            raise NanoGPTError(f"--dataset={dataset} holds ids of {describe_tokenizer(loader.tokenizer)}, but this "
                               f"model uses {describe_tokenizer(record)}; pass --validation-steps=0, or a dataset "
                               "prepared with the model's tokenizer")
        validation_steps = steps_within_split(loader, validation_steps)

    hellaswag = None
    if examples is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        columns = (TextColumn("hellaswag"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("hellaswag", total=len(examples))
            hellaswag = evaluate_hellaswag(model, examples, runtime.device, batch_size=batch_size, dtype=runtime.dtype,
                                           tokenizer=tokenizer, on_result=lambda _: progress.advance(task))
    val_loss = None if loader is None else validation_loss(model, loader, validation_steps, runtime.device, runtime.dtype)
    _print_summary(hellaswag, val_loss, validation_steps, json_output)


def _eval_tasks(pretrained: str | None, checkpoint: Path | None, device: str, dtype: str, quantize: str, tasks: str,
                batch_size: int, limit: int | None, num_fewshot: int | None, as_json: bool) -> None:
    names = [name.strip() for name in tasks.split(",") if name.strip()]
    if not names:
        raise NanoGPTError("--tasks is empty; name one or more lm-evaluation-harness tasks, comma-separated")
    try:
        from lm_eval.utils import make_table

        from nano_gpt.eval.harness import evaluate_tasks
    except ImportError as e:
        raise NanoGPTError(f"--tasks needs lm-evaluation-harness ({e.name} is missing): pip install 'nano-gpt[eval]'") from None
    from nano_gpt.runtime import Runtime

    loaded = read_model(pretrained, checkpoint)
    model, tokenizer = loaded.model, loaded.tokenizer()
    runtime = Runtime.build(device, dtype, "eval", model.config)
    logger.info("evaluating %s on %s", ", ".join(names), runtime.describe())
    _quantize(model, quantize)
    model.to(runtime.device)
    results = evaluate_tasks(model, tokenizer, names, runtime.device, runtime.dtype, batch_size, limit, num_fewshot)
    if as_json:
        print(json.dumps({key: results.get(key) for key in ("results", "versions", "n-samples")}, default=str))
    else:
        print(make_table(results))


def _quantize(model: GPT, quantize: str) -> None:
    """Weight-only int8 for --quantize=int8; the activations keep the runtime's autocast precision."""
    if quantize == "int8":
        from nano_gpt.quantize import quantize_int8

        quantize_int8(model.eval())


def _print_summary(hellaswag: HellaSwagResult | None, val_loss: float | None, validation_steps: int, as_json: bool) -> None:
    h = hellaswag
    summary = {
        "examples": 0 if h is None else h.total,
        "correct": None if h is None else h.correct,
        "correct_norm": None if h is None else h.correct_norm,
        "acc": None if h is None else h.acc,
        "acc_norm": None if h is None else h.acc_norm,
        "val_loss": val_loss,
        "validation_steps": 0 if val_loss is None else validation_steps,
    }
    if as_json:
        print(json.dumps(summary))
        return
    if h is None:
        print("hellaswag: skipped")
    else:
        print(f"hellaswag examples: {h.total}")
        print(f"acc:      {h.acc:.4f} ({h.correct}/{h.total})")
        print(f"acc_norm: {h.acc_norm:.4f} ({h.correct_norm}/{h.total})")
    print("val_loss: skipped" if val_loss is None else f"val_loss: {val_loss:.4f} (mean of {validation_steps} batches)")
