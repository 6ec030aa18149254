"""The GPT-2 training loop: gradient accumulation, mixed precision, compile, DDP, checkpoints, evals.

Single-device model code; DDP and torch.compile are applied here, from outside the model.
"""

import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nano_gpt.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, model_from_state, save_checkpoint
from nano_gpt.data.loader import ShardLoader
from nano_gpt.devices import autocast, default_compile, default_dtype
from nano_gpt.distributed import DistInfo, all_reduce_sum, cleanup_distributed, init_distributed
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval import evaluate_hellaswag, load_hellaswag, validation_loss
from nano_gpt.generate import generate
from nano_gpt.model import GPT, GPTConfig
from nano_gpt.pretrained import load_pretrained
from nano_gpt.tokenizer import get_tokenizer
from nano_gpt.train.config import DTYPES, TrainConfig
from nano_gpt.train.metrics import flops_per_token, peak_flops, step_line
from nano_gpt.train.runlog import RunLog
from nano_gpt.train.optim import learning_rate, make_optimizer

logger = logging.getLogger(__name__)

SAMPLE_PROMPT = "Hello, I'm a language model,"


@dataclass
class TrainResult:
    last_step: int
    losses: list[float]  # train loss of each step run in this process
    checkpoint: Path | None  # the newest checkpoint written
    interrupted: bool  # stopped by Ctrl-C
    main_process: bool  # rank 0, which speaks for the run


class _StopRequest:
    """Turns the first Ctrl-C into a request to checkpoint and stop at the next step boundary; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        logger.warning("Ctrl-C: writing a checkpoint after this step, then stopping (Ctrl-C again to abort)")

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _pinned(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Page-locked host memory lets the copy to a GPU run asynchronously (non_blocking)."""
    return tuple(t.pin_memory() for t in batch) if device.type == "cuda" else batch


def train(config: TrainConfig) -> TrainResult:
    """Train a GPT as `config` says; under torchrun, each process calls this."""
    config = config.resolved()
    dist_info, device = init_distributed(config.device)
    try:
        return _train(config, dist_info, device)
    finally:
        cleanup_distributed()


def _resume_path(config: TrainConfig) -> Path | None:
    if config.resume is None:
        return None
    if config.resume == "auto":
        path = latest_checkpoint(Path(config.checkpoint_dir))
        if path is None:
            logger.info("--resume=auto: no checkpoint in %s, starting from scratch", config.checkpoint_dir)
        return path
    return Path(config.resume)


# Settings that shape the batches or the schedule: changing them on resume makes a different run.
_RUN_DEFINING = ("dataset", "sequence_length", "micro_batch_size", "total_batch_size", "max_steps", "warmup_steps",
                 "max_lr", "min_lr_ratio", "weight_decay", "seed", "shuffle")


def _warn_if_changed(saved: dict, config: TrainConfig) -> None:
    changed = [f"{k} {saved[k]} -> {getattr(config, k)}" for k in _RUN_DEFINING
               if k in saved and saved[k] != getattr(config, k)]
    if changed:
        logger.warning("resuming with settings that differ from the checkpoint's (%s); the run will not match an "
                       "uninterrupted one", ", ".join(changed))


def _build_model(config: TrainConfig, resume_state: dict | None) -> GPT:
    if resume_state is not None:
        return model_from_state(resume_state)
    if config.pretrained is not None:
        return load_pretrained(config.pretrained)
    torch.manual_seed(config.seed)  # the same init on every rank
    return GPT(GPTConfig.from_preset(config.model))


def _train(config: TrainConfig, dist_info: DistInfo, device: torch.device) -> TrainResult:
    resume_file = _resume_path(config)
    resume_state = load_checkpoint(resume_file) if resume_file is not None else None
    model = _build_model(config, resume_state).to(device)
    if config.sequence_length > model.config.block_size:
        raise NanoGPTError(f"--sequence-length={config.sequence_length} exceeds the model's context of "
                           f"{model.config.block_size}")
    grad_accum = config.grad_accum_steps(dist_info.world_size)
    dtype = DTYPES[config.dtype] or default_dtype(device)
    use_compile = default_compile(device) if config.compile is None else config.compile
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 for any matmul left in fp32
        torch.backends.cudnn.allow_tf32 = True

    loader_args = dict(dataset_dir=Path(config.dataset_dir), dataset=config.dataset,
                       micro_batch_size=config.micro_batch_size, sequence_length=config.sequence_length,
                       rank=dist_info.rank, world_size=dist_info.world_size)
    train_loader = ShardLoader(split="train", shuffle=config.shuffle, seed=config.seed, **loader_args)
    val_loader = ShardLoader(split="validation", **loader_args) if config.validation_steps > 0 else None
    hellaswag = None
    if config.hellaswag_samples != 0:
        hellaswag = load_hellaswag(config.hellaswag_file, limit=config.hellaswag_samples)

    optimizer = make_optimizer(model, config.max_lr, config.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    start_step = 0
    if resume_state is not None:
        optimizer.load_state_dict(resume_state["optimizer"])
        train_loader.load_state_dict(resume_state["loader"])
        scaler.load_state_dict(resume_state["scaler"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        if device.type == "cuda" and "cuda" in resume_state["rng"]:
            torch.cuda.set_rng_state(resume_state["rng"]["cuda"], device)
        start_step = resume_state["step"] + 1
        logger.info("resuming from %s at step %d", resume_file, start_step)
        _warn_if_changed(resume_state.get("train_config", {}), config)

    raw_model = model
    if dist_info.enabled:
        model = ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if use_compile:
        model = torch.compile(model)

    n_params = raw_model.num_parameters(exclude_embeddings=True)
    flops_per_step = flops_per_token(raw_model.config, n_params, config.sequence_length) * config.total_batch_size
    peak = peak_flops(device)
    min_lr = config.max_lr * config.min_lr_ratio
    last_step = config.max_steps - 1 if config.stop_at_step is None else min(config.max_steps - 1, config.stop_at_step)
    dtype_name = str(dtype).removeprefix("torch.")
    log = RunLog(Path(config.log_file), resume_step=start_step - 1 if resume_state else None) if dist_info.is_main else None
    if log is not None and resume_state is None:
        log.write("config", 0, config=config.to_dict(), model_config=raw_model.config.to_dict(), world_size=dist_info.world_size,
                  device=str(device), dtype=dtype_name, compile=use_compile, n_params=n_params)
    logger.info("model %s: %.1fM parameters | device %s | %s | compile %s | %d processes | %d micro-steps of %d x %d "
                "tokens per step", config.pretrained or config.model, raw_model.num_parameters() / 1e6, device,
                dtype_name, use_compile, dist_info.world_size, grad_accum,
                config.micro_batch_size, config.sequence_length)

    def write_checkpoint(step: int) -> Path | None:
        if not dist_info.is_main:
            return None
        path = checkpoint_path(Path(config.checkpoint_dir), step)
        save_checkpoint(path, {
            "step": step,
            "model": raw_model.state_dict(),  # unwrapped and uncompiled: loads anywhere
            "model_config": raw_model.config.to_dict(),
            "train_config": config.to_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "loader": train_loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {})},
        })
        logger.info("saved %s", path)
        return path

    def evaluate(step: int) -> None:
        tokens = step * config.total_batch_size  # evaluated before this step's update
        raw_model.eval()
        if val_loader is not None:
            # The compiled model sees the training shapes again, so this does not recompile per call.
            val = validation_loss(model, val_loader, config.validation_steps, device, dtype)
            if log is not None:
                log.write("val", step, tokens=tokens, val_loss=val)
            logger.info("step: %d | val loss: %.4f", step, val)
        if hellaswag is not None:
            # Variable-length batches: the uncompiled module, so eval never triggers recompilation.
            result = evaluate_hellaswag(raw_model, hellaswag, device, dtype=dtype, rank=dist_info.rank,
                                        world_size=dist_info.world_size)
            if log is not None:
                log.write("hellaswag", step, tokens=tokens, acc=result.acc, acc_norm=result.acc_norm, total=result.total)
            logger.info("step: %d | hellaswag acc_norm: %.4f (%d/%d)", step, result.acc_norm, result.correct_norm,
                        result.total)
        if dist_info.is_main:
            enc = get_tokenizer()
            prompt = torch.tensor([enc.encode_ordinary(SAMPLE_PROMPT)] * 2, device=device)
            with autocast(device, dtype):
                samples = generate(raw_model, prompt, 24, top_k=50, generator=torch.Generator(device).manual_seed(42))
            for i, tokens_ in enumerate(samples):
                logger.info("sample %d: %s", i, enc.decode(tokens_))
        raw_model.train()

    stop = _StopRequest()
    progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        disable=not (dist_info.is_main and sys.stderr.isatty()), transient=True)
    task = progress.add_task("train", total=last_step + 1, completed=start_step)
    losses: list[float] = []
    last_checkpoint = resume_file
    step = start_step - 1
    try:
        with progress:
            for step in range(start_step, last_step + 1):
                final = step == last_step
                if step % config.eval_steps == 0 or final:
                    evaluate(step)
                t0 = time.perf_counter()
                lr = learning_rate(step, config.max_lr, min_lr, config.warmup_steps, config.max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                loss_accum = torch.zeros((), device=device)
                for micro_step in range(grad_accum):
                    x, y = (t.to(device, non_blocking=True) for t in _pinned(train_loader.next_batch(), device))
                    # Only the last micro-step all-reduces gradients across ranks.
                    if dist_info.enabled:
                        ddp_model.require_backward_grad_sync = micro_step == grad_accum - 1
                    with autocast(device, dtype):
                        _, loss = model(x, y)
                    loss = loss / grad_accum  # the mean over the whole step, not the sum of means
                    loss_accum += loss.detach()
                    scaler.scale(loss).backward()
                # One collective per step: the loss to average, and whether any rank got Ctrl-C, so all
                # ranks stop at the same step.
                stats = all_reduce_sum(torch.stack([loss_accum, torch.tensor(float(stop.requested), device=device)]))
                loss_value, stopping = stats[0].item() / dist_info.world_size, stats[1].item() > 0
                if not math.isfinite(loss_value):
                    raise NanoGPTError(
                        f"loss is {loss_value} at step {step}; stopped before updating the weights. The last good "
                        f"checkpoint is {last_checkpoint or 'none (no checkpoint yet)'}; try a lower --max-lr or "
                        "another --dtype")
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip).item()
                scaler.step(optimizer)  # with fp16, skips the step if gradients overflowed
                scaler.update()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                tok_per_sec = config.total_batch_size / dt
                mfu = flops_per_step / dt / peak / dist_info.world_size if peak else None
                losses.append(loss_value)
                if dist_info.is_main:
                    progress.console.print(step_line(step, loss_value, norm, dt * 1000, tok_per_sec, lr, mfu),
                                           markup=False, highlight=False, soft_wrap=True)
                    log.write("train", step, tokens=(step + 1) * config.total_batch_size, loss=loss_value, norm=norm,
                              lr=lr, dt_ms=dt * 1000, tok_per_sec=tok_per_sec, mfu=mfu)
                progress.advance(task)
                if final or stopping or (step > 0 and step % config.checkpoint_steps == 0):
                    last_checkpoint = write_checkpoint(step) or last_checkpoint
                if stopping:
                    break
    finally:
        stop.restore()
    return TrainResult(last_step=step, losses=losses, checkpoint=last_checkpoint, interrupted=stop.requested,
                       main_process=dist_info.is_main)
