"""nano-gpt's benchmark suite: our code beside the obvious alternative, in one process, on the same inputs.

    python script/bench.py                 # everything, on the best device (about 4 minutes on a 2-core CPU)
    python script/bench.py --only train,generate --device=cpu

Prints the machine, then a table of figures and ratios. Ratios are what to compare across machines.
"""

import argparse
import contextlib
import ctypes
import datetime
import functools
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench_* scripts

from nano_gpt import GPT, GPTConfig, generate  # noqa: E402
from nano_gpt.runtime import Runtime, resolve_device  # noqa: E402
from nano_gpt.train.optim import make_optimizer  # noqa: E402
from nano_gpt.train.step import train_step  # noqa: E402

# Wall-clock seconds, or with --clock=cpu this process's CPU seconds: on a machine whose cores other processes share,
# a single-threaded run timed in CPU seconds still measures the work, where wall-clock time does not.
CLOCK: Callable[[], float] = time.perf_counter
TRAIN_SHAPE = dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=50304)
MICRO_BATCH, SEQUENCE = 8, 256


def machine() -> str:
    """CPU model, cores, the date, and the library versions: what a table in docs/benchmarks.md is headed by."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = f" | GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu} | {os.cpu_count()} cores | {datetime.date.today()} | torch {torch.__version__} | "
            f"Python {platform.python_version()}{gpu}")


class PeakMemory:
    """Peak memory of a block above what was in use when it began: CUDA's allocator peak, or on Linux the
    process's peak RSS (VmHWM, reset via /proc/self/clear_refs). On Linux, memory that glibc holds but that
    no tensor uses is first handed back (malloc_trim), so the start is what is live."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @staticmethod
    def _status(key: str) -> int:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key))
        return int(line.split()[1]) * 1024

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif Path("/proc/self/clear_refs").exists():
            gc.collect()
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
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


def copy_bandwidth(device: torch.device, nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes/s that a large tensor copy moves (read plus written): the memory bandwidth that decoding,
    which streams every weight once per token, is held against."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):  # the first touches the pages
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(step: callable, device: torch.device) -> float:
    """Seconds one call takes, queued device work included."""
    t0 = CLOCK()
    step()
    _sync(device)
    return CLOCK() - t0


def _time_steps(step: callable, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first call, median seconds per call after warmup)."""
    first = _timed(step, device)
    for _ in range(warmup - 1):
        step()
    times = sorted(_timed(step, device) for _ in range(steps))
    return first, times[len(times) // 2]


def _train_runtime(device: torch.device, dtype: str = "auto") -> Runtime:
    return Runtime.build(str(device), dtype, "train", GPTConfig(**TRAIN_SHAPE))


class PlainLoss(nn.Module):
    """nanoGPT's forward: the full (B, T, V) logits, then `F.cross_entropy` over them (what the fused loss replaces)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor, return_logits: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(idx, targets)  # `train_step` asks for the fused loss; this is the logits path


def _our_trainer(runtime: Runtime, lr: float, use_compile: bool, plain_loss: bool = False) -> callable:
    """One call = one real training step (`train_step`: autocast, scaler, clipping) of a fresh model."""
    torch.manual_seed(0)
    raw = GPT(GPTConfig(**TRAIN_SHAPE)).to(runtime.device)
    opt = make_optimizer(raw.parameters(), lr, 0.1, fused=runtime.has_fused_adamw)
    model = PlainLoss(raw) if plain_loss else raw
    model = torch.compile(model) if use_compile else model
    scaler = runtime.grad_scaler()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        return train_step(model, [opt], scaler, lambda: batch, runtime, grad_accum=1, grad_clip=1.0).loss

    return step


def _measure_step(step: callable, device: torch.device, steps: int, warmup: int = 2) -> dict:
    """Median seconds a step after `warmup` steps (compilation, optimizer state), the first step's seconds,
    and the peak memory of the timed steps above what is held between steps (weights, gradients, optimizer)."""
    first = _timed(step, device)
    for _ in range(warmup - 1):
        step()
    with PeakMemory(device) as mem:
        _, dt = _time_steps(step, steps, 0, device)
    return {"s": dt, "first_s": first, "peak_bytes": mem.bytes}


def _held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors a training step keeps between steps: weights, gradients, optimizer state."""
    tensors = {p.data_ptr(): p for p in model.parameters()}
    tensors.update({p.grad.data_ptr(): p.grad for p in model.parameters() if p.grad is not None})
    tensors.update({t.data_ptr(): t for state in optimizer.state.values() for t in state.values()
                    if isinstance(t, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def bench_train(device: torch.device, steps: int = 5) -> dict:
    """Training step tokens/s and peak memory: ours (`train_step`, the default precision, compiled where that
    is the default, fused loss) vs nanoGPT's recipe (fp32, compile, full logits) and transformers fp32 eager."""
    from transformers import GPT2Config, GPT2LMHeadModel

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (MICRO_BATCH, SEQUENCE), generator=g)
    y = torch.randint(0, 50257, (MICRO_BATCH, SEQUENCE), generator=g)
    tokens = MICRO_BATCH * SEQUENCE
    runtime = _train_runtime(device)
    use_compile = runtime.compiles_by_default
    # Each contender's model and optimizer are dropped before the next one is measured.
    ours = _measure_step(functools.partial(_our_trainer(runtime, 1e-4, use_compile), (x, y)), device, steps)
    nanogpt = _measure_step(functools.partial(_our_trainer(_train_runtime(device, "fp32"), 1e-4, True, plain_loss=True),
                                              (x, y)), device, steps)
    x, y = x.to(device), y.to(device)

    c = TRAIN_SHAPE
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                                    n_positions=c["block_size"], vocab_size=c["vocab_size"], resid_pdrop=0.0,
                                    embd_pdrop=0.0, attn_pdrop=0.0)).to(device).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4)

    def hf_step() -> None:
        hf_opt.zero_grad(set_to_none=True)  # as train_step: gradients are held between steps
        hf(x, labels=y).loss.backward()
        hf_opt.step()

    hf_result = _measure_step(hf_step, device, steps)
    hf_held = _held_bytes(hf, hf_opt)
    # ours and nanoGPT's recipe hold the same tensors as transformers (same parameters, AdamW, gradients)
    return {"ours_tok_s": tokens / ours["s"], "nanogpt_tok_s": tokens / nanogpt["s"], "hf_tok_s": tokens / hf_result["s"],
            "ratio_hf": hf_result["s"] / ours["s"], "ratio_nanogpt": nanogpt["s"] / ours["s"],
            "ours_first_step_s": ours["first_s"], "dtype": runtime.dtype_name, "dtype_reason": runtime.dtype_reason,
            "compile": use_compile, "held_bytes": hf_held, "ours_peak_bytes": ours["peak_bytes"],
            "nanogpt_peak_bytes": nanogpt["peak_bytes"], "hf_peak_bytes": hf_result["peak_bytes"]}


def bench_loss_memory(device: torch.device) -> dict:
    """Peak memory and seconds of the LM head + cross-entropy, forward and backward, at the training shape:
    the fused, chunked loss vs the full logits (fp32)."""
    from nano_gpt.fused_loss import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    n, c, v = MICRO_BATCH * SEQUENCE, TRAIN_SHAPE["n_embd"], TRAIN_SHAPE["vocab_size"]
    hidden = torch.randn(n, c, generator=g).to(device).requires_grad_()
    weight = (0.02 * torch.randn(v, c, generator=g)).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(device)

    def plain() -> None:
        F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-1).backward()
        hidden.grad = weight.grad = None

    def fused() -> None:
        linear_cross_entropy(hidden, weight, targets).backward()
        hidden.grad = weight.grad = None

    out = {}
    for name, fn in (("plain", plain), ("fused", fused)):
        fn()
        with PeakMemory(device) as mem:
            fn()
        _, out[f"{name}_s"] = _time_steps(fn, 3, 0, device)
        out[f"{name}_peak_bytes"] = mem.bytes
    return out


def _weight_bytes(model: GPT) -> int:
    """Bytes of weights one decode step reads: all but the position table, of which it reads one row."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) - model.transformer.wpe.weight.nbytes


def bench_generate(device: torch.device, new_tokens: int = 100, sequences: int = 5) -> dict:
    """Generation tokens/s for the GPT-2 124M shape (random weights), top-k 50: ours with the default decode
    precision, eager (the default) and with the compiled decode step, vs transformers' generate in fp32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from nano_gpt.hf import config_from_hf, state_dict_from_hf

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).to(device).eval()  # GPT-2 124M shape
    runtime = Runtime.build(str(device), "auto", "decode", config_from_hf(hf.config.to_dict()))
    ours = GPT(config_from_hf(hf.config.to_dict())).eval()
    ours.load_state_dict(state_dict_from_hf(hf.state_dict()))
    ours.to(runtime.device, runtime.dtype)
    prompt = torch.randint(0, 50257, (sequences, 8), generator=torch.Generator().manual_seed(0)).to(device)

    def our_generate(compile: bool | None) -> callable:
        return lambda: generate(ours, prompt, new_tokens, top_k=50, eos_token=None, compile=compile,
                                generator=torch.Generator(device).manual_seed(0))

    def hf_generate() -> None:
        with torch.inference_mode():
            hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=50256)

    tokens = new_tokens * sequences
    _, eager_dt = _time_steps(our_generate(False), 3, 1, device)
    start = time.perf_counter()  # compiling is timed on the wall clock: Inductor compiles in worker processes
    our_generate(True)()
    compile_s = time.perf_counter() - start
    _, compiled_dt = _time_steps(our_generate(True), 3, 0, device)
    _, hf_dt = _time_steps(hf_generate, 2, 1, device)
    ours_dt = eager_dt  # generate's default: the compiled step is opt-in
    bandwidth = copy_bandwidth(device)
    weight_bytes = _weight_bytes(ours)
    return {"ours_tok_s": tokens / ours_dt, "eager_tok_s": tokens / eager_dt, "compiled_tok_s": tokens / compiled_dt,
            "compile_s": compile_s, "hf_tok_s": tokens / hf_dt,
            "ratio": hf_dt / ours_dt, "ratio_compiled": hf_dt / compiled_dt, "dtype": runtime.dtype_name,
            "dtype_reason": runtime.dtype_reason, "weight_bytes": weight_bytes, "copy_bytes_s": bandwidth,
            "bandwidth_share": weight_bytes * new_tokens / ours_dt / bandwidth,
            "bandwidth_share_compiled": weight_bytes * new_tokens / compiled_dt / bandwidth}


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
    return {"default_loss": default, "fp32_loss": fp32, "relative_difference": abs(default - fp32) / fp32,
            "dtype": default_runtime.dtype_name}


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """"met", or by how much the target is missed."""
    if value >= target if higher_is_better else value <= target:
        return "met"
    if higher_is_better:
        return f"MISSED: {value:.2f}x is {100 * (1 - value / target):.1f}% short of {target}x"
    return f"MISSED: {value:.2f} is {100 * (value / target - 1):.1f}% over {target}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default="train,memory,loss,generate,hellaswag,prepare",
                        help="comma-separated subset of: train, memory, loss, generate, hellaswag, prepare")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: torch's choice, all cores)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time in wall-clock seconds, or in this process's CPU seconds (with --threads=1 on a "
                             "machine whose cores other processes share)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    only = set(args.only.split(","))
    console = Console(width=220)  # a wide table also when piped to a file
    console.print(f"machine: {machine()} | device: {device} | {torch.get_num_threads()} threads | {args.clock} clock")
    if device.type == "cpu":  # fresh figures for the table (a cached verdict may date from a busy machine)
        from nano_gpt.precision import cpu_precision

        cpu_precision(TRAIN_SHAPE["n_embd"], TRAIN_SHAPE["vocab_size"], "train", remeasure=True)
        cpu_precision(768, 50257, "decode", remeasure=True)  # the generation benchmark's GPT-2 124M
    train_runtime = _train_runtime(device)
    # The targets depend on whether bf16 pays here: on a CPU, as measured; CUDA cards have bf16 units.
    bf16_pays = train_runtime.dtype != torch.float32
    console.print(f"training precision: {train_runtime.dtype_name} ({train_runtime.dtype_reason})")
    console.print(f"targets for a machine where bf16 {'pays' if bf16_pays else 'does not pay'}")
    table = Table("benchmark", "ours", "alternative", "ratio", "target", "verdict")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C prints what was measured so far
        _run(only, device, bf16_pays, table, console)
    console.print(table)


def _bench_train(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    r = bench_train(device)
    vs_hf, vs_nanogpt = (2.5, 1.8) if bf16_pays else (1.5, 1.0)
    table.add_row(f"train step, tok/s ({r['dtype']}, compile={r['compile']}, fused loss; first step "
                  f"{r['ours_first_step_s']:.0f} s)", f"{r['ours_tok_s']:,.0f}",
                  f"{r['hf_tok_s']:,.0f} (transformers fp32 eager)", f"{r['ratio_hf']:.2f}x", f">= {vs_hf}x",
                  verdict(r["ratio_hf"], vs_hf))
    table.add_row("", "", f"{r['nanogpt_tok_s']:,.0f} (nanoGPT's recipe: fp32, compile, full logits)",
                  f"{r['ratio_nanogpt']:.2f}x", f">= {vs_nanogpt}x", verdict(r["ratio_nanogpt"], vs_nanogpt))
    held = r["held_bytes"]
    if r["ours_peak_bytes"] is not None:
        ours_total, hf_total = held + r["ours_peak_bytes"], held + r["hf_peak_bytes"]
        table.add_row("peak training memory: weights, gradients and AdamW state "
                      f"({_mib(held)}) + a step's peak above them", _mib(ours_total),
                      f"{_mib(hf_total)} (transformers); {_mib(held + r['nanogpt_peak_bytes'])} (nanoGPT's recipe)",
                      f"{ours_total / hf_total:.2f}x", "<= 0.6x", verdict(ours_total / hf_total, 0.6, False))


def _bench_memory(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    r = bench_loss_memory(device)
    table.add_row("LM head + cross-entropy, forward and backward, fp32: peak memory (time)",
                  f"{_mib(r['fused_peak_bytes'])} ({1e3 * r['fused_s']:.0f} ms, fused and chunked)",
                  f"{_mib(r['plain_peak_bytes'])} ({1e3 * r['plain_s']:.0f} ms, full logits)",
                  f"{r['fused_peak_bytes'] / r['plain_peak_bytes']:.2f}x" if r["plain_peak_bytes"] else "", "", "")


def _bench_loss(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    r = bench_loss_parity(device)
    table.add_row(f"train loss after 50 steps, TinyShakespeare ({r['dtype']} default vs fp32)",
                  f"{r['default_loss']:.4f}", f"{r['fp32_loss']:.4f}", f"{100 * r['relative_difference']:.2f}% apart",
                  "<= 2%", verdict(100 * r["relative_difference"], 2.0, False))


def _bench_generate(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    r = bench_generate(device)
    target = 3.0 if bf16_pays else 2.0
    console.print(f"decode precision: {r['dtype']} ({r['dtype_reason']}); copy bandwidth "
                  f"{r['copy_bytes_s'] / 1e9:.1f} GB/s; {r['weight_bytes'] / 1e6:.0f} MB of weights per step")
    table.add_row(f"generation, tok/s (124M, 5 x 100, top-k 50; {r['dtype']} weights, eager decode step: "
                  f"{100 * r['bandwidth_share']:.0f}% of copy bandwidth)", f"{r['ours_tok_s']:,.1f}",
                  f"{r['hf_tok_s']:,.1f} (transformers generate, fp32)", f"{r['ratio']:.2f}x", f">= {target}x",
                  verdict(r["ratio"], target))
    table.add_row(f"  the same with generate(compile=True) (the first call, compiling, took {r['compile_s']:.0f} s; "
                  f"{100 * r['bandwidth_share_compiled']:.0f}% of copy bandwidth)", f"{r['compiled_tok_s']:,.1f}",
                  f"eager: {r['eager_tok_s']:,.1f}", f"{r['ratio_compiled']:.2f}x", f">= {target}x",
                  verdict(r["ratio_compiled"], target))


def _bench_hellaswag(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    from bench_hellaswag import bench_hellaswag

    r = bench_hellaswag(device=str(device), clock=CLOCK)
    table.add_row(f"HellaSwag, examples/s (124M, batched in {r['dtype']}; fp32: "
                  f"{r['batched_fp32_examples_per_s']:.2f} = {r['speedup_fp32']:.2f}x)",
                  f"{r['batched_examples_per_s']:.2f}", f"{r['one_by_one_examples_per_s']:.2f} (one at a time, fp32)",
                  f"{r['speedup']:.2f}x", ">= 3x", verdict(r["speedup"], 3.0))


def _bench_prepare(device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    from bench_prepare import bench_prepare

    r = bench_prepare()
    table.add_row(f"prepare_dataset, tok/s ({r['num_workers']} workers, wall clock: needs idle cores)", f"{r['prepare_tokens_per_s']:,}",
                  f"{r['single_thread_tokens_per_s']:,} (tiktoken, 1 thread)", f"{r['speedup']:.2f}x", ">= 1.6x",
                  verdict(r["speedup"], 1.6))


def _run(only: set[str], device: torch.device, bf16_pays: bool, table: Table, console: Console) -> None:
    """Each benchmark asked for, in order; one that fails shows its error and the others still run."""
    sections = {"train": _bench_train, "memory": _bench_memory, "loss": _bench_loss, "generate": _bench_generate,
                "hellaswag": _bench_hellaswag, "prepare": _bench_prepare}
    for name, section in sections.items():
        if name in only:
            start = time.perf_counter()
            try:
                section(device, bf16_pays, table, console)
                console.print(f"{name}: done in {time.perf_counter() - start:.0f} s")
            except Exception as e:  # noqa: BLE001 - a benchmark's failure is reported, not fatal
                console.print_exception()
                table.add_row(f"{name}: failed", f"{type(e).__name__}: {e}", "", "", "", "")


if __name__ == "__main__":
    main()
