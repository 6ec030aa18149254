"""nanoGPT's laptop recipe (character-level Shakespeare) with nano-gpt, and optionally with nanoGPT itself.

    python script/bench_baby.py                              # the full recipe: 2,000 iterations
    python script/bench_baby.py --max-steps=200              # a short version
    python script/bench_baby.py --nanogpt=~/nanoGPT          # also run nanoGPT's train.py on the same machine

The recipe is nanoGPT's README for a CPU: `train.py config/train_shakespeare_char.py --device=cpu --compile=False
--eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0` ("about 3 minutes", validation loss 1.88). nano-gpt runs it
as `train --model=baby` (the same shape, batch, context, iterations and learning-rate schedule) with its own
defaults for precision and compile. Prints each run's wall time and final validation loss. The corpus is
TinyShakespeare from the download cache, else the path given with --corpus. Targets (issue 21): validation loss
<= 1.88 at 2,000 iterations, and wall time <= 0.5x nanoGPT's on the same machine.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"Model name:\s*(.+)", out).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or platform.machine()


def run_nano_gpt(work: Path, corpus: Path, max_steps: int, device: str) -> tuple[float, float]:
    """(wall seconds, last validation loss) of `nano-gpt train --model=baby` on TinyShakespeare, prepared first."""
    cache = work / "cache" / "tinyshakespeare"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus, cache / "input.txt")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "NANO_GPT_CACHE": str(work / "cache"), "PYTHONPATH": path}
    base = [sys.executable, "-m", "nano_gpt"]
    subprocess.run([*base, "prepare_dataset", "--dataset=tinyshakespeare", "--tokenizer=char"], cwd=work, env=env,
                   check=True, capture_output=True)  # not timed: nanoGPT's prepare.py is not either
    warmup = 100 if max_steps > 100 else max_steps // 10  # nanoGPT's 100, as long as the run is longer
    steps = [] if max_steps == 2000 else [f"--max-steps={max_steps}", f"--warmup-steps={warmup}",
                                          f"--eval-steps={max_steps}"]
    start = time.perf_counter()
    with open(work / "train.err", "w") as err:  # the log lines, samples among them
        subprocess.run([*base, "train", "--dataset=tinyshakespeare", "--tokenizer=char", "--model=baby",
                        f"--device={device}", *steps], cwd=work, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=err)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (work / "checkpoints" / "train_log.jsonl").read_text().splitlines()]
    return wall, [r["val_loss"] for r in records if r["kind"] == "val"][-1]


def run_nanogpt(nanogpt: Path, work: Path, corpus: Path, max_steps: int) -> tuple[float, float]:
    """(wall seconds, last validation loss) of nanoGPT's train.py with its README's CPU command line."""
    data = work / "nanogpt"
    shutil.copytree(nanogpt, data, ignore=shutil.ignore_patterns(".git", "out*"))
    shutil.copyfile(corpus, data / "data" / "shakespeare_char" / "input.txt")
    # prepare.py imports requests for its download, which the copied input.txt makes unneeded.
    prepare = ("import runpy, sys, types\ntry:\n    import requests\nexcept ImportError:\n"
               "    sys.modules['requests'] = types.ModuleType('requests')\n"
               "runpy.run_path('data/shakespeare_char/prepare.py', run_name='__main__')")
    subprocess.run([sys.executable, "-c", prepare], cwd=data, check=True, capture_output=True)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
                          "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12",
                          "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={max_steps}",
                          f"--lr_decay_iters={max_steps}", "--dropout=0.0", f"--eval_interval={min(250, max_steps)}",
                          "--wandb_log=False"], cwd=data, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    losses = re.findall(r"val loss ([0-9.]+)", out)
    return wall, float(losses[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--corpus", type=Path, help="TinyShakespeare's input.txt (default: the download cache)")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT to run side by side")
    parser.add_argument("--keep", type=Path, help="copy nano-gpt's run log, its stderr and last checkpoint here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from nano_gpt.data.sources import tinyshakespeare_path

    corpus = args.corpus or tinyshakespeare_path()
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, {platform.system()}; {args.max_steps} iterations")
    with tempfile.TemporaryDirectory() as tmp:
        wall, loss = run_nano_gpt(Path(tmp), corpus, args.max_steps, args.device)
        print(f"nano-gpt: {wall:.1f} s, validation loss {loss:.4f}", flush=True)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in [Path(tmp) / "train.err", *sorted((Path(tmp) / "checkpoints").iterdir())[-2:]]:
                shutil.copy(path, args.keep)
        if args.nanogpt is not None:
            their_wall, their_loss = run_nanogpt(args.nanogpt.expanduser(), Path(tmp), corpus, args.max_steps)
            print(f"nanoGPT:  {their_wall:.1f} s, validation loss {their_loss:.4f}")
            print(f"wall time ratio nano-gpt / nanoGPT: {wall / their_wall:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
