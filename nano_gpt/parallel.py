"""How training spreads over processes, applied from outside the single-device model: nothing, DDP or FSDP,
plus activation checkpointing and torch.compile.

- none: one process (`--parallelism=auto` without torchrun).
- DDP (`auto` under torchrun, or `ddp`): every rank holds the whole model, its gradients and AdamW's two
  moments, 16 bytes per parameter, and gradients are averaged during the backward pass.
- FSDP (`fsdp`): FSDP2's `fully_shard` over a one-dimensional device mesh splits every transformer block, and
  the root (embeddings, final LayerNorm and the LM head, whose weight *is* the token embedding: one parameter,
  so one shard), evenly over the ranks. A block's weights are all-gathered just before it runs and freed after;
  gradients are reduce-scattered, so each rank keeps 16/N bytes per parameter. With `--dtype=bf16` weights are
  gathered and computed in bf16 while gradients are reduced in fp32. Checkpoints become sharded folders
  (`nano_gpt.checkpoint.sharded`).

With FSDP or activation checkpointing each block is compiled on its own (the FSDP all-gathers run between
compiled blocks); otherwise the whole model (or its DDP wrapper) is, as before.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.checkpoint import checkpoint

from nano_gpt import distributed
from nano_gpt.defaults import PARALLELISMS
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import GPT
from nano_gpt.runtime import Runtime

logger = logging.getLogger(__name__)

BYTES_PER_PARAMETER = {"parameters": 4, "gradients": 4, "optimizer": 8}  # fp32 weights and grads, AdamW's 2 moments


def resolve_parallelism(name: str, runtime: Runtime) -> str:
    """none, ddp or fsdp for a `--parallelism` value: auto is DDP under torchrun with several processes."""
    if name not in PARALLELISMS:
        raise NanoGPTError(f"unknown --parallelism={name}; choose {', '.join(PARALLELISMS)}")
    if name == "auto":
        return "ddp" if runtime.distributed else "none"
    if not dist.is_initialized():
        logger.warning("--parallelism=%s in one process: there is nothing to spread, so it trains unsharded on one "
                       "device (start several processes with torchrun)", name)
        return "none"
    return name


def is_fsdp(model: nn.Module) -> bool:
    """Whether `model`'s parameters are split over ranks (FSDP), so that every rank takes part in saving it."""
    return isinstance(model, FSDPModule)


def _prepare_block(block: nn.Module, compile: bool, activation_checkpointing: bool) -> None:
    """Compile one block's forward, and with activation checkpointing keep only its input for the backward pass
    (the rest is recomputed). The forward is replaced on the instance, so module names and state dicts stay
    those of the plain model."""
    if not (compile or activation_checkpointing):
        return
    forward = torch.compile(block.forward) if compile else block.forward
    if activation_checkpointing:
        forward = functools.partial(checkpoint, forward, use_reentrant=False)
    block.forward = forward


def _shard(model: GPT, runtime: Runtime) -> None:
    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,))
    policy = MixedPrecisionPolicy()  # fp32: weights gathered and gradients reduced as they are
    if runtime.dtype == torch.bfloat16:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    # The root holds what no block does; it stays gathered after the forward, whose end (the tied LM head)
    # the backward starts with.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


def state_bytes(n_params: int, shards: int = 1) -> dict[str, float]:
    """Bytes per rank for the parameters, gradients and AdamW state of `n_params` split `shards` ways."""
    return {part: n_params * size / shards for part, size in BYTES_PER_PARAMETER.items()}


def describe_memory(kind: str, n_params: int, world_size: int) -> str:
    """The start-of-run line: what each rank is expected to hold before activations."""
    shards = world_size if kind == "fsdp" else 1
    parts = state_bytes(n_params, shards)
    share = f"1/{shards} of " if shards > 1 else ""
    return (f"parallelism {kind}: expected per rank {share}parameters {_gib(parts['parameters'])}, gradients "
            f"{_gib(parts['gradients'])}, optimizer state {_gib(parts['optimizer'])}; "
            f"{_gib(sum(parts.values()))} before activations")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def parallelize(model: GPT, runtime: Runtime, parallelism: str, compile: bool,
                activation_checkpointing: bool = False) -> nn.Module:
    """Apply `--parallelism`, activation checkpointing and compilation to `model` (on its device, before the
    optimizer is built: FSDP replaces the parameters by their shards). Returns what runs the training forward
    pass: the model itself under FSDP, else the model or its DDP wrapper, compiled as a whole if asked."""
    kind = resolve_parallelism(parallelism, runtime)
    per_block = kind == "fsdp" or activation_checkpointing
    if per_block:
        for block in model.transformer.h:
            _prepare_block(block, compile, activation_checkpointing)
    if kind == "fsdp":
        _shard(model, runtime)
        forward: nn.Module = model
    else:
        forward = distributed.wrap_ddp(model, runtime.device) if kind == "ddp" else model
        if compile and not per_block:
            forward = torch.compile(forward)
    logger.info(describe_memory(kind, model.num_parameters(), runtime.world_size))
    return forward


@contextlib.contextmanager
def whole_model(model: GPT) -> Iterator[GPT]:
    """The model with all its weights on every rank, run eagerly: an FSDP model's parameters gathered one by one
    into a plain copy, dropped afterwards; any other model as it is, with blocks compiled in place run uncompiled
    (varying shapes would recompile them). All ranks enter this together.

    For evaluations whose forward passes differ between ranks (each rank's share of HellaSwag, samples on rank
    0): through the sharded model they would deadlock on its all-gathers, and would leave its hooks' bookkeeping
    (which the next backward pass's prefetching follows) different on each rank. Costs 4 bytes per parameter
    while it lasts."""
    if not is_fsdp(model):
        with torch.compiler.set_stance("force_eager"):
            yield model
        return
    model.reshard()  # after a forward the root stays gathered; now every parameter is a DTensor on every rank
    with torch.device("meta"):
        copy = GPT(model.config)
    copy.to_empty(device=next(model.parameters()).device)
    copy.lm_head.weight = copy.transformer.wte.weight  # to_empty gave the tied pair two tensors
    mine = dict(copy.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():  # the same order on every rank: each gather is a collective
            mine[name].copy_(param.full_tensor() if isinstance(param, DTensor) else param)
    copy.train(model.training)
    yield copy
