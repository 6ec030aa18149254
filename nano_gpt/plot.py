"""Reading `nano-gpt train`'s JSON-lines log, and drawing it: loss, HellaSwag and learning rate.

The log holds one JSON object per line, each with a "kind" and a "step": an optional "config"
record, then "train", "val" and "hellaswag" records. Several logs overlay in one figure to compare
runs. matplotlib is an optional extra (`pip install 'nano-gpt[plot]'`); reading a log and
summarising it work without it.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nano_gpt.errors import NanoGPTError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

# The numeric fields of each record kind (see the training log contract); others are kept but not checked.
NUMERIC_FIELDS: dict[str, tuple[str, ...]] = {
    "train": ("tokens", "loss", "norm", "lr", "dt_ms", "tok_per_sec", "mfu"),
    "val": ("tokens", "val_loss"),
    "hellaswag": ("tokens", "acc", "acc_norm", "total"),
}


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
        pairs = [(r[x], r[key]) for r in self.records.get(kind, []) if _is_finite(r.get(x)) and _is_finite(r.get(key))]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def read_log(path: str | Path, label: str | None = None) -> TrainingLog:
    """Parse a training log; a missing file or a malformed line is a NanoGPTError naming file and line.

    An unterminated last line that does not parse is skipped with a warning: it is a record the
    trainer is still writing, so a live run can be plotted.
    """
    path = Path(path)
    if not path.is_file():
        raise NanoGPTError(f"training log {path} not found; pass the JSON-lines file written by `nano-gpt train` "
                           "(by default checkpoints/train_log.jsonl)")
    lines = path.read_bytes().splitlines(keepends=True)
    by_step: dict[str, dict[int, dict[str, Any]]] = {kind: {} for kind in NUMERIC_FIELDS}
    config: dict[str, Any] = {}
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if number == len(lines) and not raw.endswith(b"\n"):
                logger.warning("%s: skipping an unfinished last line (is the run still writing it?)", where)
                continue
            raise NanoGPTError(f"{where}: not valid JSON ({e}); each line must be one JSON object") from e
        if not isinstance(record, dict):
            raise NanoGPTError(f"{where}: expected a JSON object with \"kind\" and \"step\", got {type(record).__name__}")
        kind, step = record.get("kind"), record.get("step")
        if not isinstance(kind, str) or not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise NanoGPTError(f"{where}: every record needs a string \"kind\" and a non-negative integer \"step\"")
        if kind == "config":
            config = record
        elif kind in by_step:
            for name in NUMERIC_FIELDS[kind]:
                if record.get(name) is not None and not _is_number(record[name]):
                    raise NanoGPTError(f"{where}: \"{name}\" must be a number, got {record[name]!r}")
            by_step[kind][step] = record
        else:
            logger.debug("%s: ignoring a record of unknown kind %r", where, kind)
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


def ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing): the first points are not
    pulled towards zero."""
    if not 0 <= smoothing < 1:
        raise NanoGPTError(f"smoothing must be at least 0 (none) and below 1, got {smoothing}")
    out, average, weight = [], 0.0, 0.0
    for v in values:
        average = smoothing * average + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(average / weight)
    return out


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
    steps = [r["step"] for kind in NUMERIC_FIELDS for r in log.records.get(kind, [])]
    _, tokens = log.series("train", "tokens")
    _, losses = log.series("train", "loss")
    val_steps, val_losses = log.series("val", "val_loss")
    best = min(range(len(val_losses)), key=val_losses.__getitem__, default=None)
    hellaswag = [r for r in log.records.get("hellaswag", []) if _is_finite(r.get("acc_norm"))]
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


def format_count(value: float | None, _pos: object = None) -> str:
    """1234567 -> 1.23M: token counts and throughputs; also a matplotlib tick formatter."""
    if value is None:
        return "-"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise NanoGPTError("matplotlib is not installed; pip install 'nano-gpt[plot]'") from e


def auto_smoothing(n_points: int) -> float:
    """An EMA weight that averages over about 2% of a curve's points; none for under 50 points."""
    window = n_points / 50
    return 0.0 if window <= 1 else 1 - 1 / window


def plot_logs(
    logs: Sequence[TrainingLog],
    *,
    baseline_loss: float | None = None,
    baseline_hellaswag: float | None = None,
    smoothing: float | None = None,
    zoom: bool = True,
) -> Figure:
    """A 2x2 figure: loss against step and against tokens, HellaSwag acc_norm and learning rate against step.

    Each run gets one colour. The train loss is drawn raw (faint) and as an EMA with weight
    `smoothing` (None: `auto_smoothing` for each run; 0: raw only); validation loss is dashed with
    markers. `zoom` cuts off the first steep drop of the loss so that the end of training, where
    runs differ, is readable. Rendering uses Agg and no pyplot state, so it needs no display and
    works inside notebooks.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    if smoothing is not None and not 0 <= smoothing < 1:
        raise NanoGPTError(f"smoothing must be at least 0 (none) and below 1, got {smoothing}")
    fig = Figure(figsize=(13, 8.5), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_step, ax_tokens), (ax_hs, ax_lr) = fig.subplots(2, 2)
    ax_tokens.sharey(ax_step)
    several = len(logs) > 1
    smoothed: list[list[float]] = []  # each run's train loss as drawn (smoothed), for the zoom
    for i, log in enumerate(logs):
        color, prefix = f"C{i % 10}", f"{log.label} " if several else ""
        weight = auto_smoothing(len(log.series("train", "loss")[1])) if smoothing is None else smoothing
        for ax, x in ((ax_step, "step"), (ax_tokens, "tokens")):
            xs, ys = log.series("train", "loss", x=x)
            if xs and weight:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
                ys = ema(ys, weight)
            if xs:
                ax.plot(xs, ys, color=color, linewidth=1.6,
                        label=f"{prefix}train (EMA {weight:.3g})" if weight else f"{prefix}train")
            if x == "step":
                smoothed.append(ys)
            xs, ys = log.series("val", "val_loss", x=x)
            if xs:
                ax.plot(xs, ys, color=color, linestyle="--", marker="o", markersize=3.5, linewidth=1.2,
                        label=f"{prefix}val")
        xs, ys = log.series("hellaswag", "acc_norm")
        if xs:
            ax_hs.plot(xs, ys, color=color, marker="o", markersize=3.5, linewidth=1.4, label=log.label)
        xs, ys = log.series("train", "lr")
        if xs:
            ax_lr.plot(xs, ys, color=color, linewidth=1.4, label=log.label)

    for ax in (ax_step, ax_tokens):
        if baseline_loss is not None:
            ax.axhline(baseline_loss, color="0.35", linestyle=":", linewidth=1.4, label=f"baseline {baseline_loss:g}")
    if baseline_hellaswag is not None:
        ax_hs.axhline(baseline_hellaswag, color="0.35", linestyle=":", linewidth=1.4,
                      label=f"baseline {baseline_hellaswag:g}")
    limits = _zoomed_loss_limits(logs, smoothed, baseline_loss) if zoom else None
    if limits is not None:
        ax_step.set_ylim(limits)

    ax_step.set(title="Loss", xlabel="step", ylabel="loss")
    ax_tokens.set(title="Loss against tokens", xlabel="tokens", ylabel="loss")
    ax_tokens.xaxis.set_major_formatter(FuncFormatter(format_count))
    ax_hs.set(title="HellaSwag", xlabel="step", ylabel="acc_norm")
    ax_lr.set(title="Learning rate", xlabel="step", ylabel="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (ax_step, ax_hs, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
    _legend_or_note(ax_step, "upper right", "no train or validation records")
    _legend_or_note(ax_tokens, None, "no records with token counts")
    _legend_or_note(ax_hs, "lower right", "no HellaSwag records")
    _legend_or_note(ax_lr, "upper right" if several else None, "no learning-rate records")
    for ax in (ax_step, ax_tokens, ax_hs, ax_lr):
        ax.grid(True, alpha=0.3)
    fig.suptitle(", ".join(log.label for log in logs))
    return fig


def _zoomed_loss_limits(logs: Sequence[TrainingLog], smoothed: Sequence[list[float]],
                        baseline: float | None) -> tuple[float, float] | None:
    """From the lowest loss drawn to the highest after the first tenth of each curve (the steep
    drop), or None where the curves are too short to have a drop worth cutting."""
    lows: list[float] = []
    tops: list[float] = []
    for log, train in zip(logs, smoothed):
        raw = log.series("train", "loss")[1]
        val = log.series("val", "val_loss")[1]
        lows += [min(values) for values in (raw, val) if values]
        tops += [max(values[len(values) // 10:]) for values, n in ((train, 20), (val, 5)) if len(values) >= n]
    if not tops:
        return None
    if baseline is not None:
        lows.append(baseline)
        tops.append(baseline)
    bottom, top = min(lows), max(tops)
    margin = 0.05 * (top - bottom)
    return bottom - margin, top + margin


def _legend_or_note(ax: Axes, legend_loc: str | None, empty_note: str) -> None:
    """A legend where one helps, or a note saying why the panel is empty (logs with missing kinds still plot)."""
    if not ax.lines or all(line.get_label().startswith("baseline") for line in ax.lines):
        ax.text(0.5, 0.5, empty_note, transform=ax.transAxes, ha="center", va="center", color="0.4")
    if legend_loc is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc, fontsize="small")


def save_figure(fig: Figure, output: str | Path) -> Path:
    """Write the figure (the format follows the suffix: .png, .svg, .pdf, ...), creating parent folders."""
    output = Path(output)
    formats = fig.canvas.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in formats:
        raise NanoGPTError(f"cannot write {output}: name a .png file (or one of .{', .'.join(sorted(formats))})")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    return output
