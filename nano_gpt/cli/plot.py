"""`nano-gpt plot`: draw training logs as one PNG and print each run's headline numbers."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from nano_gpt.plot import plot_logs, save_figure
from nano_gpt.runlog import LOG_FILE, read_logs, summarize


def plot(
    log_files: Annotated[list[Path], typer.Argument(help="JSON-lines logs written by `nano-gpt train` (there: "
                                                         f"checkpoints/{LOG_FILE} by default); several overlay.",
                                                    show_default=False)],
    output: Annotated[Path, typer.Option(help="The image to write (.png; .svg and .pdf work too); "
                                              "parent folders are created.")] = Path("artifacts/train-log.png"),
    label: Annotated[Optional[list[str]], typer.Option(help="Legend name of each LOG_FILE, repeated once per file "
                                                            "in order (default: the file name).")] = None,
    baseline_loss: Annotated[Optional[float], typer.Option(help="Draw a reference validation loss, e.g. 3.2924 "
                                                                "for OpenAI's GPT-2 124M on FineWeb-Edu.")] = None,
    baseline_hellaswag: Annotated[Optional[float], typer.Option(help="Draw a reference HellaSwag acc_norm, e.g. "
                                                                     "0.2955 for GPT-2 124M.")] = None,
    smoothing: Annotated[Optional[float], typer.Option(help="EMA weight for the train loss, from 0 (raw loss only) "
                                                            "to below 1; default: averages about 2% of the run.",
                                                       show_default=False)] = None,
    zoom: Annotated[bool, typer.Option(help="Cut off the loss axis above the first steep drop, so the end of "
                                            "training is readable.")] = True,
) -> None:
    """Plot training logs: train and validation loss against step and tokens, HellaSwag accuracy and
    learning rate against step.

    Writes one image and prints each run's final train loss, best validation loss, last HellaSwag
    accuracy and median throughput.
    """
    logs = read_logs(log_files, label)
    fig = plot_logs(logs, baseline_loss=baseline_loss, baseline_hellaswag=baseline_hellaswag,
                    smoothing=smoothing, zoom=zoom)
    print(f"wrote {save_figure(fig, output)}")
    for log in logs:
        print(summarize(log))
