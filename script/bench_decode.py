"""Benchmark: decoding speed and memory-bandwidth utilisation (MBU) per batch size and precision.

GPT-2 124M's shape with random weights (nothing is downloaded), prepared as `nano-gpt sample` prepares it
(`for_inference`: fp32, bf16, or int8 weights with bf16 activations), decoding with `generate` and `sample`'s
sampler (top-k 50). For each batch size and precision it prints tokens/s, the time of one decode step, and MBU:
the bytes one step must read (every weight matrix once, plus the KV cache written so far) times steps/s, over
the bandwidth of a large tensor copy measured in the same run (bytes read plus written), as nanochat's inference
benchmark reports it. A step's time is that of N new tokens less that of 1, over N - 1: the prompt's prefill
cancels out. With --profile, a short torch.profiler table of one configuration says where a step's time goes.
Where llama-cpp-python is installed, llama.cpp decodes the same weights (exported as GGUF bf16 and q8_0) beside
ours at batch 1.

    python script/bench_decode.py                                     # batch 1, 5, 32 x fp32, bf16, int8
    python script/bench_decode.py --batch-sizes=1 --precisions=bf16,int8 --profile

Targets (issue 25, 124M shape, a 2-core CPU): bf16 at batch 1 as fast as llama.cpp's bf16 on the same model
(121 tok/s where the issue measured it), batch 5 >= 4x batch 1's tokens/s, MBU >= 50%, int8 >= 1.6x bf16's
tokens/s at batch 1.
"""

import argparse
import copy
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench.py

from bench import copy_bandwidth, machine, verdict  # noqa: E402

from nano_gpt.config import PRESETS  # noqa: E402
from nano_gpt.generate import for_inference, generate  # noqa: E402
from nano_gpt.model import GPT  # noqa: E402

PROMPT_TOKENS = 16
PRECISIONS = {"fp32": (torch.float32, "none"), "bf16": (torch.bfloat16, "none"), "int8": (torch.bfloat16, "int8")}


def step_bytes(model: GPT, batch_size: int, positions: float) -> float:
    """Bytes one decode step reads: each weight matrix and vector once (the embedding tables only for the B rows
    they look up, unless the LM head is the token table itself), plus the keys and values of `positions` cached
    positions of every layer and row."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    total -= wpe.nbytes
    if getattr(model.lm_head, "weight", None) is not wte:  # untied (int8 head): the token table is looked up only
        total -= wte.nbytes
    c = model.config
    kv = 2 * c.n_layer * batch_size * positions * c.n_embd * wte.element_size()
    return total + kv


def time_generate(model: GPT, prompt: torch.Tensor, new_tokens: int, repeats: int) -> float:
    """Fastest of `repeats` runs of `generate` (other work on the machine only ever adds time)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(model, prompt, new_tokens, top_k=50, eos_token=None, generator=torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - start)
    return best


def profile(model: GPT, prompt: torch.Tensor, new_tokens: int, rows: int = 10) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    generate(model, prompt, 2, eos_token=None)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        generate(model, prompt, new_tokens, top_k=50, eos_token=None)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def llama_cpp_tokens_per_s(model: GPT, gguf_type: str, new_tokens: int) -> float | None:
    """llama.cpp's batch-1 decode of the same weights (exported as GGUF), as llama-bench's tg test times it: one
    token per call after a prompt; None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from nano_gpt.gguf_export import export_gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = export_gguf(model, Path(tmp) / "model.gguf", gguf_type)
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=PROMPT_TOKENS + new_tokens + 8,
                              n_threads=torch.get_num_threads(), verbose=False)
        llm.eval(list(range(1000, 1000 + PROMPT_TOKENS)))
        start = time.perf_counter()
        for i in range(new_tokens):
            llm.eval([2000 + i])
        return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,5,32")
    parser.add_argument("--precisions", default="fp32,bf16,int8")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="profile bf16 (or the first precision) at batch 1")
    parser.add_argument("--llama-cpp-bf16", type=float, default=121.0,
                        help="llama.cpp's bf16 tokens/s at batch 1 on this machine, the batch-1 target")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    precisions = args.precisions.split(",")
    print(machine(), f"| {torch.get_num_threads()} threads")
    bandwidth = copy_bandwidth(torch.device("cpu"))
    print(f"copy bandwidth (read + written): {bandwidth / 1e9:.1f} GB/s")
    torch.manual_seed(0)
    base = GPT(PRESETS["gpt2"]).eval()
    results: dict[tuple[str, int], float] = {}
    theirs = {t: llama_cpp_tokens_per_s(base, t, args.new_tokens) for t in ("bf16", "q8_0")}
    if theirs["bf16"] is None:
        print(f"llama.cpp: llama-cpp-python is not installed; its bf16 figure is --llama-cpp-bf16={args.llama_cpp_bf16}")
    else:
        print(f"llama.cpp, same weights, batch 1: bf16 {theirs['bf16']:.1f} tok/s, q8_0 {theirs['q8_0']:.1f} tok/s")
        args.llama_cpp_bf16 = theirs["bf16"]
    print(f"{'precision':>9} {'batch':>5} {'tok/s':>8} {'ms/step':>8} {'MB/step':>8} {'MBU':>6}")
    for name in precisions:
        dtype, quantize = PRECISIONS[name]
        model = for_inference(copy.deepcopy(base), dtype, quantize)
        for b in batch_sizes:
            prompt = torch.randint(0, 50257, (b, PROMPT_TOKENS), generator=torch.Generator().manual_seed(b))
            generate(model, prompt, 2, eos_token=None)  # warm-up: kernel choice, first-touch pages
            full = time_generate(model, prompt, args.new_tokens, args.repeats)
            one = time_generate(model, prompt, 1, args.repeats)
            step_s = (full - one) / (args.new_tokens - 1)
            nbytes = step_bytes(model, b, PROMPT_TOKENS + args.new_tokens / 2)
            results[(name, b)] = b / step_s
            print(f"{name:>9} {b:>5} {b / step_s:>8.1f} {1e3 * step_s:>8.2f} {nbytes / 1e6:>8.1f} "
                  f"{nbytes / step_s / bandwidth:>6.1%}", flush=True)
        if args.profile and name == ("bf16" if "bf16" in precisions else precisions[0]):
            print(profile(model, prompt[:1], 16))
        del model
        gc.collect()
    print("targets:")
    if ("bf16", 1) in results:
        ratio = results[("bf16", 1)] / args.llama_cpp_bf16
        print(f"  bf16 batch 1 vs llama.cpp bf16 ({args.llama_cpp_bf16} tok/s): {ratio:.2f}x -> {verdict(ratio, 1.0)}")
    for name in precisions:
        if (name, 1) in results and (name, 5) in results:
            ratio = results[(name, 5)] / results[(name, 1)]
            print(f"  {name} batch 5 vs batch 1 tokens/s: {ratio:.2f}x -> {verdict(ratio, 4.0)}")
    if ("int8", 1) in results and ("bf16", 1) in results:
        ratio = results[("int8", 1)] / results[("bf16", 1)]
        print(f"  int8 vs bf16 at batch 1: {ratio:.2f}x -> {verdict(ratio, 1.6)}")


if __name__ == "__main__":
    main()
