"""nano-gpt's benchmark suite: our code beside the obvious alternative, in one process, on the same inputs.

    python script/bench.py                 # everything, on the best device (about 4 minutes on a 2-core CPU)
    python script/bench.py --only train,generate --device=cpu

Prints the machine, then a table of figures and ratios. Ratios are what to compare across machines.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* scripts

from nano_gpt import GPT, GPTConfig, generate  # noqa: E402
from nano_gpt.runtime import Runtime, resolve_device  # noqa: E402
from nano_gpt.train.optim import make_optimizer  # noqa: E402
from nano_gpt.train.step import train_step  # noqa: E402

TRAIN_SHAPE = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50304)
MICRO_BATCH, SEQUENCE = 8, 256


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = f" | GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | Python {platform.python_version()}{gpu}"


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on Linux the process's peak RSS (VmHWM, reset via
    /proc/self/clear_refs) above what it used before."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/clear_refs").exists():
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS to the current RSS
            self.base = self._status("VmRSS:")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        elif Path("/proc/self/clear_refs").exists():
            self.bytes = max(0, self._status("VmHWM:") - self.base)  # freed pages can leave the peak below the start
        else:
            self.bytes = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(step: callable, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first call, median seconds per call after warmup)."""
    t0 = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return first, sorted(times)[len(times) // 2]


def _train_runtime(device: torch.device, dtype: str = "auto") -> Runtime:
    return Runtime.build(str(device), dtype, "train", GPTConfig(**TRAIN_SHAPE))


def _our_trainer(runtime: Runtime, lr: float, use_compile: bool) -> callable:
    """One call = one real training step (`train_step`: autocast, scaler, clipping) of a fresh model."""
    torch.manual_seed(0)
    raw = GPT(GPTConfig(**TRAIN_SHAPE)).to(runtime.device)
    opt = make_optimizer(raw, lr, 0.1, fused=runtime.has_fused_adamw)
    model = torch.compile(raw) if use_compile else raw
    scaler = runtime.grad_scaler()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return train_step(model, opt, scaler, lambda: batch, runtime, grad_accum=1, grad_clip=1.0).loss

    return step


def bench_train(device: torch.device, steps: int = 5) -> dict:
    """Training step tokens/s: ours (`train_step` in the device's default precision, compiled where that is the
    default) vs transformers fp32 eager."""
    from transformers import GPT2Config, GPT2LMHeadModel

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (MICRO_BATCH, SEQUENCE), generator=g)
    y = torch.randint(0, 50257, (MICRO_BATCH, SEQUENCE), generator=g)
    tokens = MICRO_BATCH * SEQUENCE
    runtime = _train_runtime(device)
    use_compile = runtime.compiles_by_default
    our_step = _our_trainer(runtime, 1e-4, use_compile)
    with PeakMemory(device) as ours_mem:
        ours_first, ours_dt = _time_steps(lambda: our_step((x, y)), steps, 2, device)
    x, y = x.to(device), y.to(device)

    c = TRAIN_SHAPE
    hf = GPT2LMHeadModel(GPT2Config(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                                    n_positions=c["block_size"], vocab_size=c["vocab_size"], resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0)).to(device).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def hf_step() -> None:
        hf(x, labels=y).loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    with PeakMemory(device) as hf_mem:
        _, hf_dt = _time_steps(hf_step, steps, 2, device)
    return {"ours_tok_s": tokens / ours_dt, "hf_tok_s": tokens / hf_dt, "ratio": hf_dt / ours_dt,
            "ours_first_step_s": ours_first, "dtype": runtime.dtype_name, "compile": use_compile,
            "ours_peak_bytes": ours_mem.bytes, "hf_peak_bytes": hf_mem.bytes}


def bench_generate(device: torch.device, new_tokens: int = 100, sequences: int = 5) -> dict:
    """Generation tokens/s for the GPT-2 124M shape (random weights), top-k 50, vs transformers' generate."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).to(device).eval()  # GPT-2 124M shape
    from nano_gpt.hf import config_from_hf, state_dict_from_hf

    ours = GPT(config_from_hf(hf.config.to_dict())).to(device).eval()
    ours.load_state_dict(state_dict_from_hf(hf.state_dict()))
    prompt = torch.randint(0, 50257, (sequences, 8), generator=torch.Generator().manual_seed(0)).to(device)

    def our_generate() -> None:
        generate(ours, prompt, new_tokens, top_k=50, eos_token=None, generator=torch.Generator(device).manual_seed(0))

    def hf_generate() -> None:
        with torch.inference_mode():
            hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=50256)

    with PeakMemory(device) as ours_mem:
        _, ours_dt = _time_steps(our_generate, 2, 1, device)
    with PeakMemory(device) as hf_mem:
        _, hf_dt = _time_steps(hf_generate, 2, 1, device)
    tokens = new_tokens * sequences
    return {"ours_tok_s": tokens / ours_dt, "hf_tok_s": tokens / hf_dt, "ratio": hf_dt / ours_dt,
            "ours_peak_bytes": ours_mem.bytes, "hf_peak_bytes": hf_mem.bytes}


def bench_loss_parity(device: torch.device, steps: int = 50) -> dict:
    """Loss after `steps` steps on TinyShakespeare: the device's default precision and compile vs fp32 eager,
    same init and batches (the train benchmark's shape)."""
    from nano_gpt.data.sources import tinyshakespeare_path
    from nano_gpt.tokenizer import get_tokenizer

    text = tinyshakespeare_path().read_text()
    tokens = torch.tensor(get_tokenizer().encode_ordinary(text))
    per_step = MICRO_BATCH * SEQUENCE

    def run(runtime: Runtime, use_compile: bool) -> float:
        step = _our_trainer(runtime, 1e-3, use_compile)
        for i in range(steps):
            chunk = tokens[i * per_step: (i + 1) * per_step + 1]
            loss = step((chunk[:-1].view(MICRO_BATCH, SEQUENCE), chunk[1:].view(MICRO_BATCH, SEQUENCE)))  # (B, T)
        return loss

    default_runtime = _train_runtime(device)
    default = run(default_runtime, default_runtime.compiles_by_default)
    fp32 = run(_train_runtime(device, "fp32"), False)
    return {"default_loss": default, "fp32_loss": fp32, "relative_difference": abs(default - fp32) / fp32}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default="train,loss,generate,hellaswag,prepare",
                        help="comma-separated subset of: train, loss, generate, hellaswag, prepare")
    args = parser.parse_args()
    device = resolve_device(args.device)
    only = set(args.only.split(","))
    console = Console(width=200)  # a wide table also when piped to a file
    console.print(f"machine: {machine()} | device: {device}")
    table = Table("benchmark", "ours", "alternative", "ratio", "target", "peak memory (ours / alt)")
    if "train" in only:
        r = bench_train(device)
        table.add_row(f"train step, tok/s ({r['dtype']}, compile={r['compile']}; first step {r['ours_first_step_s']:.0f} s)",
                      f"{r['ours_tok_s']:,.0f}", f"{r['hf_tok_s']:,.0f} (transformers fp32 eager)", f"{r['ratio']:.2f}x",
                      ">= 2.5x", f"{_mib(r['ours_peak_bytes'])} / {_mib(r['hf_peak_bytes'])}")
    if "loss" in only:
        r = bench_loss_parity(device)
        table.add_row("train loss after 50 steps, TinyShakespeare (default precision vs fp32)",
                      f"{r['default_loss']:.4f}", f"{r['fp32_loss']:.4f}", f"{100 * r['relative_difference']:.2f}% apart",
                      "<= 2%", "")
    if "generate" in only:
        r = bench_generate(device)
        table.add_row("generation, tok/s (124M, 5 x 100, top-k 50)", f"{r['ours_tok_s']:,.1f}",
                      f"{r['hf_tok_s']:,.1f} (transformers generate)", f"{r['ratio']:.2f}x", ">= 2x",
                      f"{_mib(r['ours_peak_bytes'])} / {_mib(r['hf_peak_bytes'])}")
    if "hellaswag" in only:
        from bench_hellaswag import bench_hellaswag

        r = bench_hellaswag()
        table.add_row("HellaSwag, examples/s (124M)", f"{r['batched_examples_per_s']:.2f}",
                      f"{r['one_by_one_examples_per_s']:.2f} (one at a time)", f"{r['speedup']:.2f}x", ">= 3x", "")
    if "prepare" in only:
        from bench_prepare import bench_prepare

        r = bench_prepare()
        table.add_row(f"prepare_dataset, tok/s ({r['num_workers']} workers)", f"{r['prepare_tokens_per_s']:,}",
                      f"{r['single_thread_tokens_per_s']:,} (tiktoken, 1 thread)", f"{r['speedup']:.2f}x", ">= 1.6x", "")
    console.print(table)


if __name__ == "__main__":
    main()
