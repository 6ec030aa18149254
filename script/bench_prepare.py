"""Throughput of `prepare_dataset` against single-thread tiktoken, on TinyShakespeare repeated 10 times.

    python script/bench_prepare.py                      # all cores
    python script/bench_prepare.py --num-workers=2      # the issue's target: >= 1.6x on 2 cores

The corpus is 10 copies of TinyShakespeare, one .txt file each. `prepare_dataset` runs end to end:
reading, tokenizing in the worker pool (its start-up included), writing shards and manifests. The
baseline is `encode_ordinary` on the same 10 texts in one thread (the workers call `encode_to_numpy`,
which gives the same tokens about 10% faster; its single-thread rate is printed too). Each figure is the best of `--rounds`,
since other processes on the machine only ever slow a round down. `cpu_ratio` is the CPU time that
prepare spent (its workers included) over the baseline's: the price of parallelism, which does not
depend on how busy the machine is, so 2 / cpu_ratio is the speedup that 2 idle cores would give.
TinyShakespeare comes from the project's download cache (NANO_GPT_CACHE), downloaded on first use.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from nano_gpt.data import prepare_dataset
from nano_gpt.data.prepare import available_cpus
from nano_gpt.data.sources import tinyshakespeare_path
from nano_gpt.tokenizer import get_tokenizer


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have exited."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def bench_prepare(repeats: int = 10, num_workers: int | None = None, start_method: str | None = None,
                  rounds: int = 3) -> dict[str, float | int | str | None]:
    """Tokens/s of prepare_dataset and of single-thread encode_ordinary on TinyShakespeare x `repeats`."""
    path = tinyshakespeare_path()
    text = path.read_text(encoding="utf-8")
    encoding = get_tokenizer()  # built before timing: both sides use the built tokenizer
    single, single_cpu, single_numpy = [], [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), _cpu_seconds()
        tokens = sum(len(encoding.encode_ordinary(text)) for _ in range(repeats))
        single.append(time.perf_counter() - start)
        single_cpu.append(_cpu_seconds() - start_cpu)
        start = time.perf_counter()
        for _ in range(repeats):
            encoding.encode_to_numpy(text, disallowed_special=())  # what the workers call: the same tokens
        single_numpy.append(time.perf_counter() - start)
    workers = num_workers or available_cpus()
    prepared, prepared_cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i in range(repeats):
            (corpus / f"{i:02d}.txt").write_text(text, encoding="utf-8")
        for _ in range(rounds):
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            result = prepare_dataset(str(corpus), ["train"], dataset_dir=Path(tmp) / "dataset", validation_tokens=0,
                                     num_workers=workers, start_method=start_method, force=True)
            prepared.append(time.perf_counter() - start)
            prepared_cpu.append(_cpu_seconds() - start_cpu)  # the pool's workers have exited: they count
    written = result["train"].manifest["tokens"]
    assert written == tokens + repeats, (written, tokens)  # plus one <|endoftext|> per document
    single_rate, prepare_rate = tokens / min(single), written / min(prepared)
    return {"tokens": written, "num_workers": workers, "cpus": available_cpus(), "start_method": start_method,
            "single_thread_tokens_per_s": round(single_rate),
            "single_thread_encode_to_numpy_tokens_per_s": round(tokens / min(single_numpy)),
            "prepare_tokens_per_s": round(prepare_rate),
            "speedup": round(prepare_rate / single_rate, 2),
            "cpu_ratio": round(min(prepared_cpu) / min(single_cpu), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="copies of TinyShakespeare in the corpus")
    parser.add_argument("--num-workers", type=int, default=None, help="tokenizer processes (default: all cores)")
    parser.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds; the best is reported")
    args = parser.parse_args()
    figures = bench_prepare(args.repeats, args.num_workers, args.start_method, args.rounds)
    print(f"single-thread encode_ordinary: {figures['single_thread_tokens_per_s']:>12,} tokens/s")
    print(f"single-thread encode_to_numpy: {figures['single_thread_encode_to_numpy_tokens_per_s']:>12,} tokens/s")
    print(f"prepare_dataset, {figures['num_workers']} workers:  {figures['prepare_tokens_per_s']:>12,} tokens/s "
          f"({figures['speedup']}x; CPU time {figures['cpu_ratio']}x the single thread's)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
