"""Autoregressive sampling with a KV cache: the prompt is processed once, then one position per token."""

from collections.abc import Callable

import torch

from nano_gpt.model import GPT
from nano_gpt.tokenizer import EOT_TOKEN, VOCAB_SIZE


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
) -> list[list[int]]:
    """Continue each row of `prompt` (B, T) by up to `max_new_tokens` tokens.

    Returns each sequence's tokens, prompt included; a sequence stops at `eos_token`, which is not
    returned. `on_token` receives each step's new tokens (B,), for streaming. Only ids below
    `vocab_size`, the tokenizer's (GPT-2's by default), are sampled.
    """
    B, T = prompt.shape
    total = T + max_new_tokens
    if total > model.config.block_size:
        raise ValueError(f"prompt plus new tokens ({total}) exceeds the model's context ({model.config.block_size})")
    caches = model.new_kv_caches(B, total) if use_cache else None
    tokens = torch.empty(B, total, dtype=torch.long, device=prompt.device)  # (B, T + new)
    tokens[:, :T] = prompt
    finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    pos = T
    if use_cache:  # only the last position's logits are needed: skip the vocabulary projection elsewhere
        logits = model.lm_head(model.hidden_states(prompt, caches)[:, -1:])  # (B, 1, V)
    else:
        logits, _ = model(prompt)
    while True:
        # Columns past the tokenizer's 50257 are padding (GPTConfig.vocab_size 50304): no text decodes
        # from them, so they are never sampled, and a padded model samples exactly as its export does.
        last = logits[:, -1, :vocab_size]  # (B, min(V, vocab_size))
        next_token = sample_next_token(last, temperature, top_k, top_p, greedy, generator)[:, 0]  # (B,)
        if eos_token is not None:
            next_token = next_token.masked_fill(finished, eos_token)
            finished |= next_token == eos_token
        tokens[:, pos] = next_token
        pos += 1
        if on_token is not None:
            on_token(next_token)
        if pos == total or (eos_token is not None and bool(finished.all())):
            break
        if use_cache:
            logits, _ = model(next_token[:, None], caches=caches, input_pos=pos - 1)
        else:
            logits, _ = model(tokens[:, :pos])
    out = []
    for row in tokens[:, :pos].tolist():
        if eos_token is not None and eos_token in row[T:]:
            row = row[: row.index(eos_token, T)]
        out.append(row)
    return out
