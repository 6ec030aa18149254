"""The CPU precision, chosen by timing this model's own matmuls in fp32 and bf16 on this machine.

Whether bf16 pays on a CPU cannot be read from its flags: an Intel Xeon with AVX512-BF16 but no AMX ran
the LM-head matmul at 150 bf16 against 208 fp32 GFLOP/s, while an AMD EPYC with the same flag ran bf16
twice as fast as fp32. So the verdict is measured, once per CPU model, thread count, torch version and
shape, and cached as JSON in the project cache folder with the load average it was measured under: a verdict
measured on a busy machine is measured again once it is quiet. The cache only saves time: one that cannot be
read or written is warned about once and the verdict measured.

Training (and evaluation) is bound by matmul throughput, so "train" times the model's (tokens x n_embd)
by (n_embd x 4 n_embd) MLP and (tokens x n_embd) by (n_embd x vocab) LM-head products. Generation is
bound by the bytes of weights streamed per token, so "decode" times matrix-vector products over
weights larger than the caches, where bf16 halves the bytes even when its arithmetic is no faster.
"""

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from nano_gpt.cache import cache_dir
from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write, parse_json

logger = logging.getLogger(__name__)

Purpose = Literal["train", "decode"]
CACHE_FILE = "precision.json"  # under nano_gpt.cache.cache_dir()
MARGIN = 1.10  # bf16 must be this much faster to be chosen: lower precision has to pay for itself
TRAIN_ROWS = 512  # tokens per timed matmul: enough rows for the matmul kernels to reach their steady rate
TRAIN_MAX_COLUMNS = 4096  # LM-head columns timed; the rate per column does not change past a few thousand
DECODE_BYTES = 128 * 2**20  # fp32 bytes of MLP weights streamed per timed pass, well beyond any L3 cache
DECODE_MAX_MATRICES = 64  # a tiny model has few small matrices that stay cached; timing thousands would mislead
REPEATS = 5  # fp32 and bf16 alternate, and each keeps its fastest run: other work only ever adds time
# A verdict measured while the 1-minute load average was at least this share of the CPUs is marked as such and
# measured again once the machine is quieter.
LOADED = 0.5
_warned = False  # a cache problem is warned about once per process


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), which together with the thread count keys the cache."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _train_work(n_embd: int, vocab_size: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """A forward pass's matmuls at this model's shapes in `dtype`, and their FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN_ROWS, n_embd, generator=g).to(dtype)
    w_fc = torch.randn(4 * n_embd, n_embd, generator=g).to(dtype)  # nn.Linear's (out, in) layout
    w_head = torch.randn(min(vocab_size, TRAIN_MAX_COLUMNS), n_embd, generator=g).to(dtype)
    flops = 2.0 * TRAIN_ROWS * n_embd * (w_fc.shape[0] + w_head.shape[0])
    return lambda: (F.linear(x, w_fc), F.linear(x, w_head)), flops


def _decode_work(n_embd: int, vocab_size: int, dtype: torch.dtype) -> tuple[Callable[[], object], float]:
    """One token's matrix-vector products over the LM head and enough MLP weights to stream DECODE_BYTES,
    in `dtype`, and the bytes of weights they read."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, n_embd, generator=g).to(dtype)
    head = torch.randn(vocab_size, n_embd, generator=g).to(dtype)
    copies = min(max(1, DECODE_BYTES // (4 * n_embd * n_embd * 4)), DECODE_MAX_MATRICES)  # distinct: none stays cached
    fcs = [torch.randn(4 * n_embd, n_embd, generator=g).to(dtype) for _ in range(copies)]
    nbytes = float(sum(w.numel() * w.element_size() for w in (head, *fcs)))
    return lambda: [F.linear(x, w) for w in (*fcs, head)], nbytes


def _measure(n_embd: int, vocab_size: int, purpose: Purpose) -> dict[str, float]:
    """Seconds for the purpose's work in fp32 and in bf16 (the fastest of REPEATS alternating runs), and
    its size (FLOPs for train, bytes for decode)."""
    make = _train_work if purpose == "train" else _decode_work
    work = {name: make(n_embd, vocab_size, dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for fn, _ in work.values():
        fn()  # warm-up: kernel selection and first-touch page faults
    best = {name: float("inf") for name in work}
    for _ in range(REPEATS):
        for name, (fn, _) in work.items():
            best[name] = min(best[name], _time(fn))
    return {"fp32_s": best["fp32"], "bf16_s": best["bf16"], "fp32_size": work["fp32"][1], "bf16_size": work["bf16"][1]}


def _reason(purpose: Purpose, m: dict[str, float], where: str) -> str:
    fp32, bf16 = m["fp32_size"] / m["fp32_s"] / 1e9, m["bf16_size"] / m["bf16_s"] / 1e9  # GFLOP/s or GB/s
    if purpose == "train":
        figures = f"bf16 matmuls {bf16:,.0f} vs fp32 {fp32:,.0f} GFLOP/s"
    else:
        figures = (f"bf16 weights {1e3 * m['bf16_s']:.2f} vs fp32 {1e3 * m['fp32_s']:.2f} ms per token-pass "
                   f"({bf16:.1f} vs {fp32:.1f} GB/s)")
    return f"{figures} at this model's shapes ({where})"


def _warn_once(message: str) -> None:
    """The cache is an optimisation: a problem with it is said once per process, and the verdict is measured."""
    global _warned
    if not _warned:
        _warned = True
        logger.warning("%s; measuring the CPU precision instead (set NANO_GPT_CACHE to a writable folder to keep "
                       "the verdict)", message)


def _load(path: Path) -> dict:
    """The cached verdicts; empty when there are none or the file cannot be used (which is warned about once)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:  # a folder, a file where a folder should be, no permission
        _warn_once(f"cannot read the precision cache {path} ({e.strerror})")
        return {}
    try:
        verdicts = parse_json(raw, str(path))
    except NanoGPTError as e:  # half-written by an older version, or edited by hand
        _warn_once(str(e))
        return {}
    if not isinstance(verdicts, dict):
        _warn_once(f"the precision cache {path} holds a JSON {type(verdicts).__name__}, not an object")
        return {}
    return verdicts


def _usable(entry: object) -> bool:
    """A verdict this version wrote: its figures, and the load it was measured under."""
    return isinstance(entry, dict) and all(
        isinstance(entry.get(k), (int, float)) and not isinstance(entry.get(k), bool) and math.isfinite(entry[k])
        and entry[k] > 0 for k in ("fp32_s", "bf16_s", "fp32_size", "bf16_size", "cpus")) and isinstance(
        entry.get("load_1m"), (int, float))


def machine_load() -> tuple[float, int]:
    """(1-minute load average, CPUs): other work inflates timings, so each verdict records what it ran beside.
    -1 where the OS has no load average (Windows): not known to be loaded."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = -1.0
    return load, os.cpu_count() or 1


def is_loaded(load_1m: float, cpus: int) -> bool:
    """Whether runnable work filled at least LOADED of the CPUs, so timings then are not to be trusted."""
    return load_1m >= LOADED * cpus


def _save(path: Path, key: str, entry: dict) -> None:
    """Add one verdict to the JSON file atomically, so readers never see half a file; a cache that cannot be
    written is warned about once and the command goes on."""
    verdicts = _load(path)
    verdicts[key] = entry
    try:
        atomic_write(path, json.dumps(verdicts, indent=1, sort_keys=True))
    except NanoGPTError as e:
        _warn_once(f"cannot keep the precision verdict: {e}")


def cpu_precision(n_embd: int, vocab_size: int, purpose: str, remeasure: bool = False) -> tuple[torch.dtype, str]:
    """torch.bfloat16 or torch.float32 for a model of this width and vocabulary on this CPU, and a one-line
    reason with the measured figures.

    `purpose` is "train" (also evaluation: compute bound) or "decode" (generation: weight-bandwidth bound).
    bf16 is chosen when it is at least MARGIN faster. The first call for a shape measures (a fraction of a
    second); later ones read the cached verdict, unless `remeasure` (the benchmark's fresh figures; a
    verdict measured while other jobs loaded the machine is replaced the same way).
    """
    if purpose not in ("train", "decode"):
        raise ValueError(f"purpose must be 'train' or 'decode', got {purpose!r}")
    path = cache_dir() / CACHE_FILE
    key = (f"{cpu_model()} | {torch.get_num_threads()} threads | torch {torch.__version__} | {purpose} | "
           f"n_embd {n_embd} | vocab {vocab_size}")
    measured = None if remeasure else _load(path).get(key)
    load_now = machine_load()
    if measured is not None and not _usable(measured):
        measured = None  # an older version's verdict, without the load it was measured under
    if measured is not None and is_loaded(measured["load_1m"], measured["cpus"]) and not is_loaded(*load_now):
        logger.info("the cached CPU precision verdict was measured under load %.1f on %d CPUs; measuring again",
                    measured["load_1m"], measured["cpus"])
        measured = None
    where = f"cached in {path}"
    if measured is None:
        measured = {**_measure(n_embd, vocab_size, purpose), "load_1m": load_now[0], "cpus": load_now[1]}  # type: ignore[arg-type]
        _save(path, key, measured)
        where = f"measured, cached in {path}"
    dtype = torch.bfloat16 if measured["fp32_s"] >= MARGIN * measured["bf16_s"] else torch.float32
    reason = _reason(purpose, measured, where)  # type: ignore[arg-type]
    if is_loaded(measured["load_1m"], measured["cpus"]):
        reason += f", measured under load {measured['load_1m']:.1f} on {measured['cpus']} CPUs"
    logger.debug("cpu_precision %s: %s, %s", key, dtype, reason)
    return dtype, reason
