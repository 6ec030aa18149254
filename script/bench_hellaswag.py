"""Benchmark: HellaSwag examples/s, batched (nano_gpt.eval) against one example at a time.

The one-at-a-time scorer is the GPT-2 reproduction's: the four candidates (context + ending) of one
example right-padded into a (4, T) batch, full logits, cross-entropy masked to the ending tokens.
Both run GPT-2 124M's shape with random weights (vocab 50257). The one-at-a-time scorer runs in fp32;
the batched one in the precision that evaluation uses by default (`--dtype=auto`: measured on a CPU,
see nano_gpt.precision) and again in fp32, where its losses and predictions must match.
Without a jsonl file the examples are synthetic, mixing the shapes of HellaSwag's two
sources: short ActivityNet captions and long WikiHow steps.

    python script/bench_hellaswag.py --examples=32
"""

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F

from nano_gpt.eval import HellaSwagExample, evaluate_hellaswag, load_hellaswag
from nano_gpt.model import GPT, GPTConfig
from nano_gpt.tokenizer import get_tokenizer

Result = TypeVar("Result")
_WORDS = ("the a man woman person dog is are was then he she they it and to of in on with into out up down "
          "slowly quickly water kitchen table knife bread paper paint wall ball field camera talks smiles "
          "holds puts takes shows cuts mixes pours runs jumps throws catches [step] [title] [header] make "
          "sure your you can use some more than before after while").split()


def synthetic_examples(n: int, seed: int = 0) -> list[HellaSwagExample]:
    """Word salad shaped like HellaSwag: one example in three short (ActivityNet-like), the rest long (WikiHow-like)."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))

    examples = []
    for i in range(n):
        (ctx_lo, ctx_hi), (end_lo, end_hi) = ((8, 25), (6, 20)) if i % 3 == 0 else ((40, 110), (20, 50))
        examples.append(HellaSwagExample(words(ctx_lo, ctx_hi), tuple(words(end_lo, end_hi) for _ in range(4)),
                                         rng.randrange(4)))
    return examples


@torch.inference_mode()
def score_one_by_one(model: GPT, example: HellaSwagExample, device: torch.device) -> list[float]:
    """The reproduction's scoring: total loss of each ending given the context, one example per pass."""
    enc = get_tokenizer()
    ctx = enc.encode_ordinary(example.ctx)
    endings = [enc.encode_ordinary(" " + e) for e in example.endings]
    T = len(ctx) + max(map(len, endings))
    tokens = torch.zeros(4, T, dtype=torch.long)
    mask = torch.zeros(4, T)
    for i, ending in enumerate(endings):
        tokens[i, : len(ctx) + len(ending)] = torch.tensor(ctx + ending)
        mask[i, len(ctx) : len(ctx) + len(ending)] = 1
    tokens, mask = tokens.to(device), mask.to(device)
    logits, _ = model(tokens)  # (4, T, V)
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")  # (4 * (T-1),)
    return (losses.view(4, T - 1) * mask[:, 1:]).sum(dim=1).tolist()


def _best_time(fn: Callable[[], Result], repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> tuple[float, Result]:
    """The fastest of `repeats` runs (other work on a shared machine only ever adds time), and fn's result."""
    times = []
    for _ in range(repeats):
        start = clock()
        result = fn()
        times.append(clock() - start)
    return min(times), result


def _predictions(losses: dict[int, tuple[float, ...]] | list[list[float]]) -> list[int]:
    rows = losses if isinstance(losses, list) else [losses[i] for i in range(len(losses))]
    return [min(range(4), key=row.__getitem__) for row in rows]


def bench_hellaswag(num_examples: int = 24, batch_size: int = 16, repeats: int = 2, device: str = "cpu",
                    hellaswag_file: str | Path | None = None, dtype: str = "auto",
                    clock: Callable[[], float] = time.perf_counter) -> dict:
    """Examples/s of batched scoring (in `dtype`; "auto": the runtime's measured evaluation precision, and
    also in fp32) and of one-at-a-time scoring in fp32, on the same examples, and their agreement."""
    from nano_gpt.runtime import Runtime

    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2", vocab_size=50257)
    runtime = Runtime.build(device, dtype, "eval", config)
    model = GPT(config).to(runtime.device).eval()
    examples = load_hellaswag(hellaswag_file, num_examples) if hellaswag_file else synthetic_examples(num_examples)

    def batched(size: int, precision: torch.dtype) -> dict[int, tuple[float, ...]]:
        losses: dict[int, tuple[float, ...]] = {}
        evaluate_hellaswag(model, examples, runtime.device, batch_size=size, dtype=precision,
                           on_result=lambda s: losses.__setitem__(s.index, s.losses))
        return losses

    one_by_one_s, reference = _best_time(lambda: [score_one_by_one(model, e, runtime.device) for e in examples],
                                         repeats, clock)
    batched_s, ours = _best_time(lambda: batched(batch_size, runtime.dtype), repeats, clock)
    fp32_s, ours_fp32 = _best_time(lambda: batched(batch_size, torch.float32), repeats, clock)
    expected = _predictions(reference)
    return {
        "device": str(runtime.device),
        "threads": torch.get_num_threads(),
        "examples": len(examples),
        "batch_size": batch_size,
        "dtype": runtime.dtype_name,
        "dtype_reason": runtime.dtype_reason,
        "one_by_one_examples_per_s": len(examples) / one_by_one_s,
        "batched_examples_per_s": len(examples) / batched_s,
        "batched_fp32_examples_per_s": len(examples) / fp32_s,
        "speedup": one_by_one_s / batched_s,
        "speedup_fp32": one_by_one_s / fp32_s,
        "max_loss_difference_fp32": max(abs(a - b) for i, ref in enumerate(reference) for a, b in zip(ref, ours_fp32[i])),
        "same_predictions_fp32": _predictions(ours_fp32) == expected,
        "same_predictions_share": sum(a == b for a, b in zip(_predictions(ours), expected)) / len(examples),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hellaswag-file", type=Path, help="real examples instead of synthetic ones")
    parser.add_argument("--dtype", default="auto", help="batched scoring's precision: auto (measured), fp32, bf16")
    args = parser.parse_args()
    print(json.dumps(bench_hellaswag(args.examples, args.batch_size, args.repeats, args.device,
                                     args.hellaswag_file, args.dtype), indent=2))
