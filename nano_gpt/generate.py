"""Autoregressive sampling with a KV cache: the prompt is processed once, then one position per token."""

import logging
from collections.abc import Callable

import torch

from nano_gpt.errors import NanoGPTError
from nano_gpt.kv_cache import KVCache
from nano_gpt.model import GPT
from nano_gpt.tokenizer import EOT_TOKEN, VOCAB_SIZE

logger = logging.getLogger(__name__)

# How many tokens an asynchronous device (CUDA, MPS) decodes between checks that every row has ended: the
# check waits for the device, so checking every token would stall its queue once per token. A CPU runs
# synchronously and checks every token for free.
EOS_CHECK_EVERY = 16


def for_inference(model: GPT, dtype: torch.dtype | str = "auto", quantize: str = "none") -> GPT:
    """Prepare `model` to decode, in place, and return it: eval mode, no gradients, and its weights in the
    decode precision, since each token streams them all.

    `dtype` "auto" is the precision the runtime measures for decoding on the model's device (on a CPU bf16
    where its matrix-vector products beat fp32's, which halves the bytes per token); `sample` and `serve` take
    the same. `quantize="int8"` stores the projections and LM head as int8 (`nano_gpt.quantize`), half of
    bf16's bytes again. A model that will train afterwards wants a copy instead: this casts its weights.
    """
    from nano_gpt.runtime import resolve_dtype  # measures once per CPU, then reads its cache

    if quantize not in ("none", "int8"):
        raise NanoGPTError(f"quantize={quantize!r}: choose none or int8")
    if isinstance(dtype, str):
        device = model.transformer.wte.weight.device
        dtype, reason = resolve_dtype(dtype, device, "decode", model.config)
        logger.info("decoding in %s (%s)", dtype, reason)
    model.eval().requires_grad_(False)
    if quantize == "int8":
        from nano_gpt.quantize import quantize_int8

        quantize_int8(model)  # from the weights as they are: quantizing fp32 rather than bf16 rounds once
        logger.info("weights quantized to int8, one scale per output channel; activations in %s", dtype)
    return model.to(dtype)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token (B, 1) from last-position logits (B, V).

    Candidates are cut to the top k first, so the softmax and the draw touch k values instead of the
    whole vocabulary (the same distribution, a fraction of the per-token work).
    """
    if greedy or temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None and top_k < logits.size(-1):
        values, candidates = torch.topk(logits, top_k, dim=-1)  # (B, k), most likely first
    else:
        values, candidates = logits.sort(dim=-1, descending=True)  # (B, V)
    values = values.float() / temperature
    if top_p is not None and top_p < 1.0:
        probs = values.softmax(dim=-1)
        # Drop a candidate when the ones ranked above it already hold top_p of the mass.
        values = values.masked_fill(probs.cumsum(dim=-1) - probs > top_p, float("-inf"))
    choice = torch.multinomial(values.softmax(dim=-1), num_samples=1, generator=generator)  # (B, 1)
    return candidates.gather(-1, choice)


def decode_step(model: GPT, token: torch.Tensor, input_pos: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
    """Logits (B, V) after one more token (B, 1) at position `input_pos` (a 1-element tensor).

    Attention runs over the whole preallocated caches, with the positions not written yet masked out, so
    every shape is the same at every position: `torch.compile` builds this once per batch size and
    cache length, and replays it for each token (gpt-fast's approach).
    """
    length = caches[0].k.shape[2]
    mask = (torch.arange(length, device=token.device) <= input_pos)[None]  # (1, T_max): positions written so far
    hidden = model.hidden_states(token, caches, input_pos=input_pos, positions=input_pos, mask=mask)  # (B, 1, C)
    return model.lm_head(hidden[:, -1])  # (B, V)


_compiled_steps: dict[str, Callable] = {}


def compiled_decode_step(device: torch.device) -> Callable:
    """`decode_step` compiled for the device: CUDA graphs on CUDA ("reduce-overhead": one launch a token)."""
    if device.type not in _compiled_steps:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _compiled_steps[device.type] = torch.compile(decode_step, mode=mode, fullgraph=True, dynamic=False)
    return _compiled_steps[device.type]


def _cache_length(total: int, block_size: int) -> int:
    """A compiled step's cache length: `total` rounded up to a multiple of 64, so that calls of similar
    lengths reuse one compiled step (attention over a few masked positions costs little)."""
    return min(-(-total // 64) * 64, block_size)


@torch.inference_mode()
def generate(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    eos_token: int | None = EOT_TOKEN,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    vocab_size: int = VOCAB_SIZE,
    compile: bool = False,
) -> list[list[int]]:
    """Continue each row of `prompt` (B, T) by up to `max_new_tokens` tokens.

    Returns each sequence's tokens, prompt included; a sequence stops at `eos_token`, which is not
    returned. `on_token` receives each step's new tokens (B,), for streaming. Only ids below
    `vocab_size`, the tokenizer's (GPT-2's by default), are sampled. The weights' dtype is the model's:
    `for_inference(model)` first casts them to the measured decode precision (bf16 weights halve the bytes
    each token streams) and optionally quantizes them to int8.

    With `use_cache`, the prompt is prefilled once, then each token runs one decode step over the KV
    cache. Past the model's context the window slides, as in nanoGPT: each further token is computed from
    the last `block_size` tokens, without the cache. `compile` compiles that step once per batch size and cache length (`compiled_decode_step`). It
    is off by default because it has not paid where measured: on a CPU the compiled step ran no faster
    than the eager one, after about 40 s of compiling, and at the 124M shape in bf16 it ran 20x slower
    than eager, 6.6x with Inductor's freezing (weights folded in as constants and prepacked for the GEMM;
    docs/benchmarks.md). On CUDA its graphs remove the per-kernel launch cost, which pays only over many
    tokens per compile.
    """
    B, T = prompt.shape
    total = T + max_new_tokens
    block_size = model.config.block_size
    device = prompt.device
    compile = compile and use_cache
    tokens = torch.empty(B, total, dtype=torch.long, device=device)  # (B, T + new)
    tokens[:, :T] = prompt
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    check_every = 1 if device.type == "cpu" else EOS_CHECK_EVERY
    pos = T
    if use_cache:  # only the last position's logits are needed: skip the vocabulary projection elsewhere
        caches = model.new_kv_caches(B, _cache_length(total, block_size) if compile else min(total, block_size))
        logits = model.lm_head(model.hidden_states(prompt[:, -block_size:], caches)[:, -1])  # (B, V)
        if compile:
            step = compiled_decode_step(device)
            input_pos = torch.tensor([T], device=device)  # advanced in place: no host-to-device copy per token
    else:
        logits = model(prompt[:, -block_size:])[0][:, -1]  # (B, V)
    while True:
        # Columns past the tokenizer's 50257 are padding (GPTConfig.vocab_size 50304): no text decodes
        # from them, so they are never sampled, and a padded model samples exactly as its export does.
        next_token = sample_next_token(logits[:, :vocab_size], temperature, top_k, top_p, greedy, generator)[:, 0]  # (B,)
        if eos_token is not None:
            next_token = next_token.masked_fill(finished, eos_token)
            finished |= next_token == eos_token
        tokens[:, pos] = next_token
        pos += 1
        if on_token is not None:
            on_token(next_token)
        # Rows that ended keep receiving eos_token, so checking late only decodes a few tokens that are cut.
        if pos == total or (eos_token is not None and (pos - T) % check_every == 0 and bool(finished.all())):
            break
        if pos > block_size or not use_cache:  # past the context, nanoGPT's crop: the last block_size tokens
            logits = model(tokens[:, max(0, pos - block_size):pos])[0][:, -1]
        elif compile:
            logits = step(model, next_token[:, None], input_pos, caches)
            input_pos += 1
        else:  # eager: attention over the positions written so far only
            logits = model(next_token[:, None], caches=caches, input_pos=pos - 1)[0][:, -1]
    out = []
    for row in tokens[:, :pos].tolist():
        if eos_token is not None and eos_token in row[T:]:
            row = row[: row.index(eos_token, T)]
        out.append(row)
    return out
