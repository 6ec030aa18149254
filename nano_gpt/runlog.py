"""The training log: its record kinds, the one writer (`RunLog`) and the one reader (`read_log`).

A log is JSON lines, each an object with a "kind" and a "step": a "config" record when a run starts,
then "train", "val", "hellaswag" and "sample" (the texts generated at an evaluation) records, and a "trackers"
record naming the experiment-tracker runs each time a run reporting to them starts. `nano-gpt plot`, the model card and notebooks read it back
through `read_log`; a line torn by a kill mid-write is the one thing both the reader and a resuming
writer skip.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write, os_error_message, parse_json

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"  # a run's log, in its --checkpoint-dir unless --log-file says otherwise

# The settings that define a run (TrainConfig field names): the model, the data and its batches, the schedule.
# A checkpoint or log whose settings differ in one of them belongs to another run: resuming with such a
# change is warned about, and the model card does not take such a log for its checkpoint's.
RUN_DEFINING = ("model", "pretrained", "dataset", "sequence_length", "micro_batch_size", "total_batch_size",
                "max_steps", "warmup_steps", "max_lr", "min_lr_ratio", "weight_decay", "seed", "shuffle", "optimizer",
                "lr_schedule", "decay_fraction", "muon_lr", "muon_momentum", "muon_weight_decay")


def differing_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The run-defining settings recorded in both dicts whose values differ, as "name old -> new"."""
    return [f"{k} {saved[k]} -> {current[k]}" for k in RUN_DEFINING if k in saved and k in current
            and saved[k] != current[k]]


# Each kind's numeric fields; the writer writes them and the reader checks them.
RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "train": ("tokens", "loss", "norm", "lr", "dt_ms", "tok_per_sec", "mfu"),
    "val": ("tokens", "val_loss"),
    "hellaswag": ("tokens", "acc", "acc_norm", "total"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite (what a plot can draw)."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # an integer beyond a float's range: JSON sets no limit
        return False


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each line; an unfinished last line (a writer killed mid-line, or one
    still writing) is skipped with a warning, any other malformed line is a NanoGPTError."""
    lines = path.read_bytes().splitlines(keepends=True)
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        try:
            record = parse_json(raw, where, "each line must be one JSON object")
        except NanoGPTError:
            if number == len(lines) and not raw.endswith(b"\n"):
                logger.warning("%s: skipping an unfinished last line (is the run still writing it?)", where)
                continue
            raise
        if not isinstance(record, dict):
            raise NanoGPTError(f"{where}: expected a JSON object with \"kind\" and \"step\", got {type(record).__name__}")
        kind, step = record.get("kind"), record.get("step")
        if not isinstance(kind, str) or not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**63:
            raise NanoGPTError(f"{where}: every record needs a string \"kind\" and a non-negative integer \"step\"")
        for name in RECORD_FIELDS.get(kind, ()):
            if record.get(name) is not None and not _is_number(record[name]):
                raise NanoGPTError(f"{where}: \"{name}\" must be a number, got {record[name]!r}")
        yield number, record


# The seed project (allenporter/nano-gpt) wrote its log as text, "kind: key: value | key: value | ...":
#   train: step: 0 | loss: 10.9512 | norm: 5.5107 | dt: 25721.70ms | tok/sec: 20383.10 | lr: 0.000001
#   val: step: 0 | loss: 10.9513
#   hellaswag: accuracy: 0.2720 | total: 2000 | correct: 544
# A hellaswag line has no step: it belongs to the step of the line before it. Its accuracy is acc_norm (the
# ending with the lowest loss per token). The seed logged no token counts.
_SEED_LINE = re.compile(r"(train|val|hellaswag): (\S.*)")
_SEED_FIELDS: dict[str, dict[str, str]] = {
    "train": {"loss": "loss", "norm": "norm", "dt": "dt_ms", "tok/sec": "tok_per_sec", "lr": "lr"},
    "val": {"loss": "val_loss"},
    "hellaswag": {"accuracy": "acc_norm", "total": "total"},
}
_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits below 2**63, as a JSON log's steps (int() takes "٣" too)
_SEED_EXAMPLES = {"train": "train: step: 0 | loss: 10.9512 | norm: 5.5107 | dt: 388.06ms | tok/sec: 1351053.82 | "
                           "lr: 0.000001",
                  "val": "val: step: 0 | loss: 10.9513",
                  "hellaswag": "hellaswag: accuracy: 0.2720 | total: 2000 | correct: 544"}


def _count(text: str) -> int:
    if not _COUNT.fullmatch(text):
        raise ValueError(f"not a count: {text!r}")
    return int(text)


def is_seed_log(path: Path) -> bool:
    """Whether `path` is the seed project's text log rather than JSON lines: its first line that is not
    blank is a seed record."""
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return _SEED_LINE.fullmatch(raw.decode("utf-8", "replace").strip()) is not None
    return False


def _seed_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each record line of a seed log, as `_records` gives them for a JSON log.

    Other lines (a seed user may have kept the console output, samples included) are skipped, and so is a
    last line without its newline: the seed wrote the newline after the record, and a line cut short can
    still parse ("lr: 0.0000" of "lr: 0.000060"). A record line whose numbers do not parse is a NanoGPTError.
    """
    lines = path.read_bytes().splitlines(keepends=True)
    step = 0
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        match = _SEED_LINE.fullmatch(raw.decode("utf-8", "replace").strip())
        if match is None:
            continue
        if number == len(lines) and not raw.endswith(b"\n"):
            logger.warning("%s: skipping an unfinished last line (is the run still writing it?)", where)
            continue
        kind, text = match.groups()
        fields = dict(part.split(": ", 1) if ": " in part else (part, "") for part in text.split(" | "))
        try:
            if kind != "hellaswag":
                step = _count(fields.get("step", ""))
            record: dict[str, Any] = {"kind": kind, "step": step}
            for name, ours in _SEED_FIELDS[kind].items():
                if name in fields:
                    value = fields[name].removesuffix("ms")
                    record[ours] = _count(value) if ours == "total" else float(value)
        except ValueError as e:
            raise NanoGPTError(f"{where}: a {kind} line of the seed project's log whose numbers do not parse; "
                               f"expected for example {_SEED_EXAMPLES[kind]!r}") from e
        yield number, record


def is_run_log(path: Path) -> bool:
    """Whether `path` is a log that a run of ours began: its first line is the "config" record `RunLog` writes
    first. Only such a file may be replaced (--overwrite) or appended to by a run."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 20)
        record = json.loads(first)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("kind") == "config" and record.get("step") == 0


class RunLog:
    """Appends records to a run's log; only the main process writes one.

    `start` begins the file: a new run's afresh; on resume, records after the checkpoint's step (written by
    the interrupted run after its last checkpoint) are dropped, so the log reads as one run. Nothing is
    written before it, so a run that fails while it is being built leaves the log as it was. Each record
    written is also handed to the `listeners` (the experiment trackers), so they see the log and nothing else.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.resume_step = resume_step
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.resume_step is not None and self.path.exists():
            kept = [record for _, record in _records(self.path) if record["step"] <= self.resume_step]
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, kind: str, step: int, **fields: object) -> None:
        """Append one record, then hand it to the listeners (the experiment trackers); a full disk or a file-size
        limit is a LogWriteError, which stops the run."""
        record = {"kind": kind, "step": step, **fields}
        line = json.dumps(record) + "\n"
        try:
            with open(self.path, "a") as f:
                f.write(line)
        except OSError as e:
            raise LogWriteError(os_error_message(e, self.path, len(line))) from e
        for listener in self.listeners:
            listener(record)


class LogWriteError(NanoGPTError):
    """The run's log cannot be appended to: training stops (with a checkpoint, where the disk allows) rather than
    go on with steps that no log records."""


@dataclass
class TrainingLog:
    """One run's records, grouped by kind and sorted by step (a later record for the same step wins)."""

    path: Path
    label: str
    config: dict[str, Any] = field(default_factory=dict)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def series(self, kind: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(xs, ys) of the `kind` records with finite numbers for both `x` and `key`; others (None, absent,
        NaN) are left out, so a log with missing fields still plots."""
        pairs = [(r[x], r[key]) for r in self.records.get(kind, []) if is_finite(r.get(x)) and is_finite(r.get(key))]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def read_log(path: str | Path, label: str | None = None) -> TrainingLog:
    """Parse a training log: JSON lines written by `RunLog`, or the seed project's text log (so old runs overlay
    new ones). A missing file or a malformed line is a NanoGPTError naming file and line."""
    path = Path(path)
    if path.is_dir():
        raise NanoGPTError(f"training log {path} is a folder; pass the log file in it, such as "
                           f"{path / LOG_FILE}")
    if not path.is_file():
        raise NanoGPTError(f"training log {path} not found; pass the JSON-lines file written by `nano-gpt train` "
                           f"(by default checkpoints/{LOG_FILE}), or a text log of allenporter/nano-gpt")
    by_step: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in RECORD_FIELDS}
    config: dict[str, Any] = {}
    try:
        for number, record in (_seed_records if is_seed_log(path) else _records)(path):
            if record["kind"] == "config":
                config = record
            elif record["kind"] in by_step:
                by_step[record["kind"]][record["step"]] = record
            else:
                logger.debug("%s:%d: ignoring a record of unknown kind %r", path, number, record["kind"])
    except OSError as e:
        raise NanoGPTError(f"cannot read training log {path} ({e.strerror})") from e
    if not any(by_step.values()):
        raise NanoGPTError(f"{path} holds no train, val or hellaswag records; is it a `nano-gpt train` log?")
    records = {kind: [steps[s] for s in sorted(steps)] for kind, steps in by_step.items()}
    return TrainingLog(path=path, label=label or path.stem, config=config, records=records)


def read_logs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[TrainingLog]:
    """Several logs for one figure. Labels default to the file stems, with the parent folder's name
    added where two stems clash (run1/train_log.jsonl, run2/train_log.jsonl)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise NanoGPTError("pass at least one training log")
    if labels:
        if len(labels) != len(paths):
            raise NanoGPTError(f"got {len(labels)} --label for {len(paths)} log files; pass one per file, in order")
    else:
        stems = [p.stem for p in paths]
        labels = [f"{p.resolve().parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
    return [read_log(p, label) for p, label in zip(paths, labels)]


def format_count(value: float | None, _pos: object = None) -> str:
    """1234567 -> 1.23M: token counts and throughputs; also a matplotlib tick formatter."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class RunSummary:
    """The headline numbers of one run; None where the log has no such records."""

    label: str
    last_step: int | None
    tokens: int | None
    final_train_loss: float | None
    best_val_loss: float | None
    best_val_step: int | None
    hellaswag_acc_norm: float | None  # the last evaluation's
    hellaswag_step: int | None
    hellaswag_total: int | None
    median_tok_per_sec: float | None  # the median ignores the slow first step and steps that ran evals

    def __str__(self) -> str:
        tokens = "" if self.tokens is None else f", {format_count(self.tokens)} tokens"
        train = "-" if self.final_train_loss is None else f"{self.final_train_loss:.4f}"
        val = "-" if self.best_val_loss is None else f"{self.best_val_loss:.4f} (step {self.best_val_step})"
        hellaswag = "-" if self.hellaswag_acc_norm is None else (
            f"{self.hellaswag_acc_norm:.4f} acc_norm (step {self.hellaswag_step}, {self.hellaswag_total} examples)")
        speed = "-" if self.median_tok_per_sec is None else f"{format_count(self.median_tok_per_sec)} tok/s (median)"
        return (f"{self.label}: last step {self.last_step}{tokens}\n"
                f"  final train loss  {train}\n"
                f"  best val loss     {val}\n"
                f"  HellaSwag         {hellaswag}\n"
                f"  throughput        {speed}")


def summarize(log: TrainingLog) -> RunSummary:
    """Final train loss, best validation loss, last HellaSwag accuracy and throughput of one run."""
    steps = [r["step"] for kind in RECORD_FIELDS for r in log.records.get(kind, [])]
    _, tokens = log.series("train", "tokens")
    _, losses = log.series("train", "loss")
    val_steps, val_losses = log.series("val", "val_loss")
    best = min(range(len(val_losses)), key=val_losses.__getitem__, default=None)
    hellaswag = [r for r in log.records.get("hellaswag", []) if is_finite(r.get("acc_norm"))]
    _, speeds = log.series("train", "tok_per_sec")
    return RunSummary(
        label=log.label,
        last_step=max(steps, default=None),
        tokens=tokens[-1] if tokens else None,
        final_train_loss=losses[-1] if losses else None,
        best_val_loss=None if best is None else val_losses[best],
        best_val_step=None if best is None else val_steps[best],
        hellaswag_acc_norm=hellaswag[-1]["acc_norm"] if hellaswag else None,
        hellaswag_step=hellaswag[-1]["step"] if hellaswag else None,
        hellaswag_total=hellaswag[-1].get("total") if hellaswag else None,
        median_tok_per_sec=statistics.median(speeds) if speeds else None,
    )
