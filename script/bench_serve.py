"""Benchmark: `nano-gpt serve` throughput with 1, 8 and 32 concurrent streaming clients, against
`nano-gpt sample` (the library's `generate`, one sequence) alone, in one process on one model.

The model has GPT-2 124M's shape with random weights (vocab 50257), in the precision `serve` picks
(`--dtype=auto`: measured on a CPU, see nano_gpt.precision). The server runs as `nano-gpt serve` runs it
(uvicorn, the batcher's worker thread) on an ephemeral port; each client streams one completion of
`--max-tokens` tokens and records its time to first token and its tokens/s. Target: 8 clients get at
least 4x the total tokens/s of one.

    python script/bench_serve.py --clients=1,8,32 --max-tokens=64
"""

import argparse
import json
import statistics
import threading
import time

import httpx
import torch
import uvicorn

from nano_gpt.cli.serve import _listen
from nano_gpt.config import GPTConfig
from nano_gpt.generate import generate
from nano_gpt.model import GPT
from nano_gpt.runtime import Runtime
from nano_gpt.serve.app import create_app
from nano_gpt.serve.batcher import Batcher
from nano_gpt.tokenizer import get_tokenizer

PROMPT = "The history of the printing press begins in the fifteenth century, when"


def sample_alone(model: GPT, prompt: list[int], max_tokens: int, device: torch.device) -> float:
    """Tokens/s of `generate` on one sequence, as `nano-gpt sample --num-sequences=1` runs it."""
    idx = torch.tensor([prompt], device=device)
    generate(model, idx, 4, eos_token=None)  # warm-up
    start = time.perf_counter()
    [row] = generate(model, idx, max_tokens, eos_token=None, generator=torch.Generator(device).manual_seed(0))
    return (len(row) - len(prompt)) / (time.perf_counter() - start)


def stream_one(url: str, max_tokens: int, seed: int, out: list[dict]) -> None:
    body = {"prompt": PROMPT, "max_tokens": max_tokens, "seed": seed, "top_k": 50, "stream": True,  # sample's top-k
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk["choices"] and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - start
    out.append({"ttft": first, "tokens": tokens, "seconds": elapsed})


def run_clients(url: str, clients: int, max_tokens: int) -> dict[str, float]:
    results: list[dict] = []
    threads = [threading.Thread(target=stream_one, args=(url, max_tokens, i, results)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert len(results) == clients, "a client got no answer"
    total = sum(r["tokens"] for r in results)
    return {"clients": clients, "tokens": total, "total_tok_s": total / wall,
            "per_client_tok_s": statistics.mean(r["tokens"] / r["seconds"] for r in results),
            "ttft_s_median": statistics.median(r["ttft"] for r in results),
            "ttft_s_max": max(r["ttft"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,8,32", help="Concurrency levels, comma-separated.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Tokens each client streams.")
    parser.add_argument("--preset", default="gpt2", help="Model shape (random weights).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", action="store_true", help="Print the rows as JSON lines.")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(args.preset)).eval()
    runtime = Runtime.build(args.device, args.dtype, "decode", model.config)
    model.to(runtime.device, runtime.dtype)
    enc = get_tokenizer()
    alone = sample_alone(model, enc.encode_ordinary(PROMPT), args.max_tokens, runtime.device)

    batcher = Batcher(model, enc, max_batch_size=max(levels), max_queue=max(levels))
    sock = _listen("127.0.0.1", 0)
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(batcher, args.preset), log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        run_clients(url, 1, 4)  # warm-up
        rows = [run_clients(url, c, args.max_tokens) for c in levels]
    finally:
        server.should_exit = True
        thread.join()

    print(f"{args.preset} shape, random weights, {runtime.describe()}, {args.max_tokens} tokens per client")
    print(f"nano-gpt sample alone (generate, 1 sequence): {alone:.1f} tok/s")
    one = next((r["total_tok_s"] for r in rows if r["clients"] == 1), None)
    print("| clients | total tok/s | vs 1 client | per-client tok/s | TTFT median (s) | TTFT max (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['total_tok_s'] / one:.2f}x" if one else "-"
        print(f"| {r['clients']} | {r['total_tok_s']:.1f} | {ratio} | {r['per_client_tok_s']:.1f} | "
              f"{r['ttft_s_median']:.3f} | {r['ttft_s_max']:.3f} |")
        if args.json:
            print(json.dumps({**r, "sample_alone_tok_s": alone}))


if __name__ == "__main__":
    main()
