"""What `train --report-to` costs a training step: the same short run with and without trackers.

    python script/bench_trackers.py                       # TinyShakespeare, gpt2-xxs, 4 x 128 tokens a step
    python script/bench_trackers.py --steps=40 --rounds=3 --trackers=tensorboard

Runs alternate (none, trackers, none, trackers, ...) so a machine whose load drifts affects both alike, and
each reports the median step time of its log (step 0 and evaluation steps left out). W&B runs offline and
Trackio writes to a temporary folder. Needs the TinyShakespeare file (downloaded, or --text=FILE).

On a busy machine step times drift more than trackers cost; `--records=N` measures the cost itself instead:
N train records written to a log the trackers follow, timing what the writing (training) thread pays per
record and the CPU time this process spends per record in all (the writer plus the trackers' thread; W&B's
own service process is not counted).
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
    parser.add_argument("--records", type=int, default=0, help="measure N records instead of training runs")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_trackers_"))
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", TRACKIO_DIR=str(root / "trackio"))
    if args.records:
        print(machine())
        for report_to in ("none", *args.trackers.split(","), args.trackers):
            per_write, cpu = cost_per_record(root, report_to, args.records)
            print(f"{report_to:>30}: {per_write * 1e6:7.1f} us per record in the writing thread, "
                  f"{cpu * 1e6:8.1f} us CPU per record in all")
        shutil.rmtree(root, ignore_errors=True)
        return
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


def cost_per_record(root: Path, report_to: str, n: int) -> tuple[float, float]:
    """(seconds the writing thread spends per record, CPU seconds this process spends per record) over n train
    records: a run of n records minus one of none, the trackers opened and closed around each as a run does."""
    def run(records: int) -> tuple[float, float]:
        from nano_gpt.runlog import RunLog
        from nano_gpt.trackers import RunStart, open_trackers, parse_report_to

        run_dir = root / f"{report_to.replace(',', '_')}_{records}"
        log = RunLog(run_dir / "train_log.jsonl")
        log.start()
        trackers = open_trackers(parse_report_to(report_to), RunStart(run_dir, "bench", run_dir.name, 0, {}), {})
        if trackers is not None:
            log.listeners.append(trackers.send)
        cpu, wall = time.process_time(), time.perf_counter()
        for step in range(records):
            log.write("train", step, tokens=(step + 1) * 512, loss=10 - step / n, norm=1.0, lr=1e-3, dt_ms=100.0,
                      tok_per_sec=5120.0, mfu=None)
        wall = time.perf_counter() - wall
        if trackers is not None:
            trackers.close()
        return wall, time.process_time() - cpu

    run(1)  # imports and first-use costs
    empty, full = run(0), run(n)
    return (full[0] - empty[0]) / n, (full[1] - empty[1]) / n


if __name__ == "__main__":
    main()
