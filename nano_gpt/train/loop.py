"""`train(config)`: check everything that can fail, build the run, then a short loop of lr, step, log,
evaluate and save.

Single-device model code; data parallelism (DDP or FSDP) and torch.compile are applied from outside the model
(`nano_gpt.parallel`).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nano_gpt.checkpoint import Checkpoint, checkpoint_path, checkpoints_in, read_checkpoint, save_checkpoint
from nano_gpt.config import SHAPE_FIELDS, GPTConfig
from nano_gpt.defaults import FSDP_FP16
from nano_gpt.data import ShardLoader
from nano_gpt.data.prepare import prepare_missing
from nano_gpt.data.shards import split_tokenizers
from nano_gpt.distributed import from_main, torchrun_ranks
from nano_gpt.errors import NanoGPTError
from nano_gpt.memory import check_fits, forward_bytes
from nano_gpt.model import GPT
from nano_gpt.parallel import parallelize
from nano_gpt.runtime import Runtime
from nano_gpt.train import rundir
from nano_gpt.tokenizer import (describe_tokenizer, padded_vocab_size, same_tokenizer, tokenizer_from_record,
                                tokenizer_record)
from nano_gpt.train.config import RECIPE_RULE, RECIPES, TrainConfig, recipe_for
from nano_gpt.train.evaluator import Evaluator
from nano_gpt.train.metrics import flops_per_token, peak_flops, step_line
from nano_gpt.train.optim import make_optimizers, require_optimizer, set_lr
from nano_gpt.runlog import LogWriteError, RunLog, differing_settings
from nano_gpt.train.state import TrainState
from nano_gpt.train.step import NonFiniteError, train_step
from nano_gpt.trackers import RunStart, Trackers, default_run_name, open_trackers

logger = logging.getLogger(__name__)

@dataclass
class TrainResult:
    last_step: int
    losses: list[float]  # train loss of each step run in this process
    checkpoint: Path | None  # the newest checkpoint written
    interrupted: int | None  # the signal that stopped it early (SIGINT for Ctrl-C, or SIGTERM), else None
    main_process: bool  # rank 0, which speaks for the run


class _StopRequest:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (what a scheduler, `timeout` or `docker stop` sends; torchrun
    passes it on to every rank) into a request to checkpoint and stop at the next step boundary; a second
    signal does what it did before (Ctrl-C interrupts at once, SIGTERM ends the process)."""

    def __init__(self) -> None:
        self.signal: int | None = None  # the one that asked
        self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGINT, signal.SIGTERM)}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        self.restore()
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        logger.warning("%s: writing a checkpoint after this step, then stopping (%s again to abort)", what, what)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _read_resume(config: TrainConfig, path: Path) -> Checkpoint:
    """The checkpoint to resume from, read and checked. A damaged newest one stops `--resume=auto`: resuming
    from an older one silently would throw away the steps after it, so the user is told which one to pass."""
    try:
        return read_checkpoint(path, train_state=True, hub=False)
    except NanoGPTError as e:
        if config.resume != "auto":
            raise
        older = [p for p in checkpoints_in(path.parent) if p != path]
        hint = (f"to continue from the one before it, pass --resume={older[-1]}" if older else
                "there is no older one: start again with --overwrite")
        raise NanoGPTError(f"{e}; --resume=auto takes the newest checkpoint and will not skip a damaged one: "
                           f"{hint}") from e


def _initial_model(config: TrainConfig, checkpoint: Checkpoint | None, tokenizer: dict[str, Any]) -> GPT:
    if checkpoint is not None:
        return checkpoint.model.train()
    if config.pretrained is not None:
        return read_checkpoint(config.pretrained).model.train()
    torch.manual_seed(config.seed)  # the same init on every rank
    return GPT(config.model_config(padded_vocab_size(tokenizer["n_vocab"])))


def _data_splits(config: TrainConfig) -> list[str]:
    return ["train"] + (["validation"] if config.validation_steps > 0 else [])


def _check_tokenizer(what: str, model_tokenizer: dict[str, Any], dataset_tokenizer: dict[str, Any],
                     config: TrainConfig) -> None:
    """A model learns token ids: training it on ids that mean other text is refused before step 0."""
    if not same_tokenizer(model_tokenizer, dataset_tokenizer):
        raise NanoGPTError(f"{what} uses {describe_tokenizer(model_tokenizer)}, but dataset {config.dataset} "
                           f"(--tokenizer={config.tokenizer}) holds ids of {describe_tokenizer(dataset_tokenizer)}; "
                           "prepare the dataset with the model's tokenizer")


def _check_same_optimizer(checkpoint: Checkpoint, config: TrainConfig) -> None:
    """The optimizer state a checkpoint holds is its optimizer's: AdamW's moments cannot continue as Muon's
    momentum (checkpoints from before --optimizer trained with AdamW)."""
    saved = checkpoint.train_config.get("optimizer", "adamw")
    if saved != config.optimizer:
        raise NanoGPTError(f"checkpoint {checkpoint.source} was trained with --optimizer={saved}; resume it with "
                           f"--optimizer={saved}, or fine-tune from it with --pretrained and --optimizer={config.optimizer}")


def _warn_if_changed(saved: dict, config: TrainConfig) -> None:
    changed = differing_settings(saved, config.to_dict())
    if changed:
        logger.warning("resuming with settings that differ from the checkpoint's (%s); the run will not match an "
                       "uninterrupted one", ", ".join(changed))


def _check_context(config: TrainConfig, model_config: GPTConfig) -> None:
    if config.sequence_length > model_config.block_size:
        raise NanoGPTError(f"--sequence-length={config.sequence_length} exceeds the model's context of "
                           f"{model_config.block_size}")


def train(config: TrainConfig) -> TrainResult:
    """Train a GPT as `config` says; under torchrun, each process calls this."""
    config.validate()
    require_optimizer(config.optimizer)
    if config.prepare:  # else the loader refuses an unprepared split, naming the command that prepares it
        # Under torchrun every rank asks: the first to take a split's lock prepares it, the others wait on that
        # lock and find it finished, all before a process group exists that could time out.
        prepare_missing(config.dataset, _data_splits(config), Path(config.dataset_dir), config.tokenizer)
    tokenizer = split_tokenizers(Path(config.dataset_dir), config.dataset, _data_splits(config), config.tokenizer)
    # Every setting decided before the run folder is touched: a pretrained model's recipe comes from its shape, a
    # shape given by flags gets the recipe of the preset closest to it (RECIPE_RULE).
    if config.pretrained is not None:
        pretrained = read_checkpoint(config.pretrained, weights=False)
        _check_tokenizer(f"--pretrained={config.pretrained}", tokenizer_record(pretrained.tokenizer()), tokenizer,
                         config)
        shape = pretrained.config
        recipe = recipe_for(shape)
    else:
        shape = config.model_config(padded_vocab_size(tokenizer["n_vocab"]))
        shaped = any(getattr(config, name) is not None for name in SHAPE_FIELDS)
        recipe = recipe_for(shape) if shaped else config.model
        if shaped:
            logger.info("model shape %d layers x %d heads x %d wide, context %d: recipe %s (%s)", shape.n_layer,
                        shape.n_head, shape.n_embd, shape.block_size, recipe, RECIPE_RULE)
    requested, config = config, config.resolved(recipe, shape.block_size)
    _check_context(config, shape)
    ranks = torchrun_ranks()  # from torchrun's environment: refused here, before any process group is joined
    config.grad_accum_steps(1 if ranks is None else ranks.world_size)
    run_dir = rundir.prepare(config)  # locks the run; deletes nothing yet
    try:
        checkpoint = _read_resume(config, run_dir.resume_file) if run_dir.resume_file is not None else None
        if checkpoint is not None:
            _check_same_optimizer(checkpoint, config)
            _check_tokenizer(f"checkpoint {checkpoint.source}", tokenizer_record(checkpoint.tokenizer()), tokenizer,
                             config)
        saved_model = checkpoint.train_config.get("model") if checkpoint is not None else None
        if config.pretrained is None and isinstance(saved_model, str) and saved_model in RECIPES \
                and saved_model != config.model:
            # The checkpoint's weights decide the model: its recipe fills what the flags leave open, and the log
            # and the next checkpoints record it, not a --model that was never trained.
            logger.warning("--model=%s differs from the checkpoint's model %s: resuming %s", config.model,
                           saved_model, saved_model)
            recipe, config = saved_model, dataclasses.replace(requested, model=saved_model).resolved(
                saved_model, checkpoint.config.block_size)
        model = _initial_model(config, checkpoint, tokenizer)
        if model.config.vocab_size < tokenizer["n_vocab"]:
            raise NanoGPTError(f"the model has {model.config.vocab_size:,} token embeddings, fewer than the "
                               f"{tokenizer['n_vocab']:,} tokens of {describe_tokenizer(tokenizer)} in dataset "
                               f"{config.dataset}")
        _check_context(config, model.config)  # a resumed checkpoint's model may differ from --model's
        runtime = Runtime.build(config.device, config.dtype, "train", model.config, torchrun=True)
        if config.parallelism == "fsdp" and runtime.dtype == torch.float16:  # --dtype=auto on a GPU without bf16
            raise NanoGPTError(FSDP_FP16)  # before any process group is joined
        runtime.join()
        try:
            return _Trainer(config, runtime, model, recipe, checkpoint, run_dir, tokenizer).run()
        finally:
            runtime.close()
    finally:
        run_dir.release()


class _Trainer:
    """The run's components, built in order so that everything that can fail does so before step 0."""

    def __init__(self, config: TrainConfig, runtime: Runtime, model: GPT, recipe: str,
                 checkpoint: Checkpoint | None, run_dir: rundir.RunDir, tokenizer: dict[str, Any]) -> None:
        self.config, self.runtime = config, runtime
        self.resume_file = checkpoint.source if checkpoint is not None else None
        self.grad_accum = config.grad_accum_steps(runtime.world_size)
        # A lower bound (the logits and one layer's activations), so an absurd micro batch fails here, not in step 0.
        check_fits(forward_bytes(model.config, config.micro_batch_size, config.sequence_length, runtime.dtype),
                   runtime.device, f"a micro batch of {config.micro_batch_size:,} x {config.sequence_length} tokens",
                   "lower --micro-batch-size (accumulation keeps --total-batch-size)")
        loader = ShardLoader(Path(config.dataset_dir), config.dataset, "train", config.micro_batch_size,
                             config.sequence_length, rank=runtime.rank, world_size=runtime.world_size,
                             shuffle=config.shuffle, seed=config.seed, tokenizer=config.tokenizer)
        model.to(runtime.device)
        self.use_compile = runtime.compiles_by_default if config.compile is None else config.compile
        # Before the optimizer: FSDP replaces the parameters by their shards.
        self.forward = parallelize(model, runtime, config.parallelism, self.use_compile, config.activation_checkpointing)
        optimizers = make_optimizers(model, config, fused=runtime.has_fused_adamw)
        self.state = TrainState(model, optimizers, runtime.grad_scaler(), loader, runtime, config.to_dict())
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint.train_state, checkpoint.source)
            logger.info("resuming from %s at step %d", checkpoint.source, self.state.step + 1)
            _warn_if_changed(checkpoint.train_config, config)
        self.log = RunLog(Path(config.log_file), checkpoint.step if checkpoint else None) if runtime.is_main else None
        self.evaluator = Evaluator(config, runtime, model, self.forward, tokenizer_from_record(tokenizer),
                                   self.log)  # loads its data: may fail
        n_params = model.num_parameters(exclude_embeddings=True)
        run_info = dict(config=config.to_dict(), model_config=model.config.to_dict(), recipe=recipe,
                        tokenizer=describe_tokenizer(tokenizer), world_size=runtime.world_size, device=str(runtime.device), dtype=runtime.dtype_name,
                        compile=self.use_compile, n_params=n_params)
        # A missing tracker package or login fails here, before anything is deleted or the log rewritten.
        self.trackers = open_trackers(config.trackers, RunStart(
            Path(config.checkpoint_dir), config.project, config.run_name or default_run_name(config.checkpoint_dir),
            self.state.step + 1, run_info), self.state.trackers, is_main=runtime.is_main)
        # Only now is anything deleted or the log (re)written: everything that could fail has passed.
        run_dir.clear_previous()  # --overwrite: the previous run's checkpoints and log (rank 0 holds the list)
        if self.log is not None:
            self.log.start()
        self.flops_per_step = flops_per_token(model.config, n_params, config.sequence_length) * config.total_batch_size
        self.peak = peak_flops(runtime.device)
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 transient=True, disable=not (runtime.is_main and sys.stderr.isatty()))
        self._announce(model, recipe, run_info, checkpoint is None)  # a new log begins with its "config" record
        self._follow(self.trackers)

    def _follow(self, trackers: Trackers | None) -> None:
        """From here on the trackers see every log record; their runs are named in the log and in each checkpoint
        (on every rank: each saves its part of a sharded one), so a resumed run continues them."""
        if not self.config.trackers:
            return
        opened = trackers.identities() if trackers is not None else {}
        self.state.trackers = from_main({**self.state.trackers, **opened})
        if trackers is not None and self.log is not None:
            self.log.write("trackers", self.state.step + 1, runs=self.state.trackers)
            self.log.listeners.append(trackers.send)

    def _announce(self, model: GPT, recipe: str, run_info: dict, new_run: bool) -> None:
        config, runtime = self.config, self.runtime
        if self.log is not None and new_run:
            self.log.write("config", 0, **run_info)
        source = f"pretrained {config.pretrained}" if config.pretrained else config.model
        shape = model.config
        logger.info("model %s: %.1fM parameters (%d layers x %d heads x %d wide, context %d) | %s | recipe %s | "
                    "%s + %s schedule | %s | compile %s | %d micro-steps of %d x %d tokens per step", source,
                    model.num_parameters() / 1e6, shape.n_layer, shape.n_head, shape.n_embd, shape.block_size,
                    describe_tokenizer(self.state.loader.tokenizer), recipe, config.optimizer, config.lr_schedule,
                    runtime.describe(), self.use_compile, self.grad_accum, config.micro_batch_size,
                    config.sequence_length)

    def _save(self) -> Path | None:
        path = checkpoint_path(Path(self.config.checkpoint_dir), self.state.step, sharded=self.state.sharded)
        if self.state.sharded:
            from nano_gpt.checkpoint.sharded import save_sharded

            save_sharded(path, self.state.state_dict())  # every rank writes its shards
        elif self.runtime.is_main:
            save_checkpoint(path, self.state.state_dict())
        else:
            return None
        logger.info("saved %s", path)
        return path if self.runtime.is_main else None

    def run(self) -> TrainResult:
        config, runtime, state = self.config, self.runtime, self.state
        last_checkpoint = self.resume_file
        losses: list[float] = []
        stop = _StopRequest()
        progress = self.progress
        task = progress.add_task("train", total=config.last_step + 1, completed=state.step + 1)
        try:
            with progress:
                for step in range(state.step + 1, config.last_step + 1):
                    final = step == config.last_step
                    if step % config.eval_steps == 0 or final:
                        state.metrics.update(self.evaluator(step))
                    t0 = time.perf_counter()
                    lr = set_lr(state.optimizers, config, step)
                    try:
                        result = train_step(self.forward, state.optimizers, state.scaler, state.loader.next_batch,
                                            runtime, self.grad_accum, config.grad_clip, stop.requested)
                    except NonFiniteError as e:
                        raise NanoGPTError(
                            f"{e} at step {step}; stopped before updating the weights. The last good checkpoint is "
                            f"{last_checkpoint or 'none (no checkpoint yet)'}; try a lower --max-lr or another "
                            "--dtype") from e
                    runtime.sync()
                    state.step = step
                    self._report(step, result.loss, result.norm, lr, time.perf_counter() - t0, result.skipped)
                    losses.append(result.loss)
                    progress.advance(task)
                    if final or result.stop_requested or (step > 0 and step % config.checkpoint_steps == 0):
                        last_checkpoint = self._save() or last_checkpoint
                    if result.stop_requested:
                        break
        except LogWriteError as e:
            raise NanoGPTError(f"{e}; {self._stop_without_log(last_checkpoint)}") from e
        finally:
            stop.restore()
            if self.trackers is not None:
                self.trackers.close()
        return TrainResult(last_step=state.step, losses=losses, checkpoint=last_checkpoint,
                           interrupted=stop.signal, main_process=runtime.is_main)

    def _stop_without_log(self, last_checkpoint: Path | None) -> str:
        """Checkpoint the steps the log could not record, where the disk allows; says what the user has."""
        step = self.state.step
        if step < 0:
            return "training stopped before its first step"
        if self.state.sharded:  # a sharded save needs every rank, and only this one stopped
            return f"training stopped after step {step}; the last checkpoint is {last_checkpoint or 'none'}"
        try:
            saved = self._save()
        except NanoGPTError as e:
            return (f"training stopped after step {step}, and its checkpoint could not be written either ({e}); the "
                    f"last checkpoint is {last_checkpoint or 'none'}")
        return f"training stopped after step {step} with checkpoint {saved}; free some space, then --resume=auto"

    def _report(self, step: int, loss: float, norm: float, lr: float, dt: float, skipped: bool) -> None:
        tokens = (step + 1) * self.config.total_batch_size
        self.state.metrics.update(tokens=tokens, train_loss=loss)
        if skipped:
            logger.warning("step %d: fp16 gradients overflowed; the update was skipped and the loss scale lowered", step)
        if not self.runtime.is_main:
            return
        tok_per_sec = self.config.total_batch_size / dt
        mfu = self.flops_per_step / dt / self.peak / self.runtime.world_size if self.peak else None
        self.progress.console.print(step_line(step, loss, norm, dt * 1000, tok_per_sec, lr, mfu), markup=False,
                                    highlight=False, soft_wrap=True)
        self.log.write("train", step, tokens=tokens, loss=loss, norm=norm, lr=lr, dt_ms=dt * 1000,
                       tok_per_sec=tok_per_sec, mfu=mfu)
