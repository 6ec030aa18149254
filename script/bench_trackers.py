"""What `train --report-to` costs a training step: the same short run with and without trackers.

    python script/bench_trackers.py                       # TinyShakespeare, gpt2-xxs, 4 x 128 tokens a step
    python script/bench_trackers.py --steps=40 --rounds=3 --trackers=tensorboard

Runs alternate (none, trackers, none, trackers, ...) so a machine whose load drifts affects both alike, and
each reports the median step time of its log (step 0 and evaluation steps left out). W&B runs offline and
Trackio writes to a temporary folder. Needs the TinyShakespeare file (downloaded, or --text=FILE).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trackers", default="tensorboard,wandb,trackio")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--text", help="a TinyShakespeare input.txt instead of the download")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_trackers_"))
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(root / "trackio"))
    if args.text:
        (root / "cache" / "tinyshakespeare").mkdir(parents=True)
        shutil.copy(args.text, root / "cache" / "tinyshakespeare" / "input.txt")
        os.environ["NANO_GPT_CACHE"] = str(root / "cache")

    from nano_gpt.data.prepare import prepare_dataset
    from nano_gpt.runlog import read_log
    from nano_gpt.train import TrainConfig, train

    prepare_dataset("tinyshakespeare", dataset_dir=root / "data", num_workers=1)
    print(machine())
    times: dict[str, list[float]] = {"none": [], args.trackers: []}
    for round_ in range(args.rounds):
        for report_to in times:
            run_dir = root / f"{report_to.replace(',', '_')}_{round_}"
            config = TrainConfig(model="gpt2-xxs", dataset="tinyshakespeare", dataset_dir=str(root / "data"),
                                 device="cpu", dtype="float32", compile=False,
                                 sequence_length=args.sequence_length, micro_batch_size=args.micro_batch_size,
                                 total_batch_size=args.sequence_length * args.micro_batch_size, max_steps=args.steps, warmup_steps=2,
                                 eval_steps=10**6, validation_steps=0, hellaswag_samples=0,
                                 checkpoint_steps=10**6, checkpoint_dir=str(run_dir),
                                 report_to=None if report_to == "none" else report_to)
            start = time.perf_counter()
            train(config)
            wall = time.perf_counter() - start
            steps = read_log(run_dir / "train_log.jsonl").records["train"][1:-1]  # the evaluating first and last
            median = statistics.median(r["dt_ms"] for r in steps)
            times[report_to].append(median)
            print(f"round {round_}: {report_to:>30}: median step {median:.1f} ms, whole run {wall:.1f} s")
    for report_to, medians in times.items():
        print(f"{report_to:>30}: median step {statistics.median(medians):.1f} ms over {len(medians)} runs")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
