"""Drawing `nano-gpt train`'s logs: loss, HellaSwag and learning rate, several runs overlaid.

Reading a log is `nano_gpt.runlog`'s job; this module only draws. matplotlib is an optional extra
(`pip install 'nano-gpt[plot]'`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nano_gpt.errors import NanoGPTError
from nano_gpt.files import atomic_write
# read_log, read_logs and summarize lived here in earlier releases; notebooks that import them from here still work.
from nano_gpt.runlog import TrainingLog, format_count, read_log, read_logs, summarize

__all__ = ["auto_smoothing", "ema", "plot_logs", "read_log", "read_logs", "save_figure", "summarize"]

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
    for name, value in (("baseline loss", baseline_loss), ("baseline HellaSwag", baseline_hellaswag)):
        if value is not None and not math.isfinite(value):
            raise NanoGPTError(f"the {name} must be a finite number, got {value}")
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
    """Write the figure (the format follows the suffix: .png, .svg, .pdf, ...), creating parent folders; through
    `atomic_write`, so a kill leaves the previous image whole, and a link at `output` is replaced, not followed."""
    output = Path(output)
    image_format = output.suffix.lstrip(".").lower()
    if image_format not in fig.canvas.get_supported_filetypes():
        raise NanoGPTError(f"cannot write {output}: name a .png file (or one of "
                           f".{', .'.join(sorted(fig.canvas.get_supported_filetypes()))})")
    blocker = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None or output.is_dir():
        reason = f"{blocker} is a file, not a folder" if blocker is not None else "it is a folder"
        raise NanoGPTError(f"cannot write {output} ({reason}); pass another --output")
    atomic_write(output, lambda f: fig.savefig(f, format=image_format))
    return output
