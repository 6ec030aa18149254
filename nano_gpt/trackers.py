"""Experiment trackers (TensorBoard, Weights & Biases, Trackio): the run log's records, sent as they are written.

`train --report-to` names them. Each is imported only when asked for and started before step 0, so a missing
package or login is one error line then. Records reach them from a background thread: a slow tracker never holds
up a step, and one that raises is dropped with one warning while training goes on. A resumed run continues the
same tracker run (its identity is kept in the checkpoint and the log), and each tracker shows every step once
(how, and where W&B offline cannot, is said at each tracker's class).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nano_gpt.errors import NanoGPTError

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "trackio")
DEFAULT_PROJECT = "nano-gpt"
_SCALAR_KINDS = ("train", "val", "hellaswag")  # records whose numbers become charts, named "<kind>/<field>"


def parse_report_to(value: str | None) -> tuple[str, ...]:
    """The tracker names of `--report-to=a,b` (none for None, "" or "none"), each known and named once."""
    names = [name.strip().lower() for name in (value or "").split(",") if name.strip()]
    if names == ["none"]:
        return ()
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        raise NanoGPTError(f"--report-to: unknown tracker {unknown[0]!r}; choose from {', '.join(TRACKERS)} "
                           "(comma-separated), or none")
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class RunStart:
    """What a tracker needs to open (or reopen) its run."""

    checkpoint_dir: Path
    project: str
    name: str
    first_step: int  # the first step this process trains: 0, or the resumed checkpoint's step + 1
    hparams: dict[str, Any]  # the log's "config" record: settings and model shape


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    kind = record["kind"]
    if kind not in _SCALAR_KINDS:
        return {}
    return {f"{kind}/{k}": v for k, v in record.items() if k not in ("kind", "step") and v is not None
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"config": {"max_lr": 1e-3}} -> {"config/max_lr": 1e-3}: hyperparameter tables take flat names."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class _TensorBoard:
    """Event files in <checkpoint-dir>/tensorboard. `purge_step` marks every event at or after this process's
    first step as superseded, so TensorBoard's reader drops what a killed run wrote past its checkpoint."""

    def __init__(self, start: RunStart, saved: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.logdir = str(start.checkpoint_dir / "tensorboard")  # the run's folder, wherever it is resumed from
        _after_earlier_event_files(Path(self.logdir))
        self.writer = SummaryWriter(self.logdir, purge_step=start.first_step, flush_secs=10)
        if start.first_step == 0:
            # The HPARAMS tab: settings and model shape, so runs can be compared by them.
            for summary in hparams(_flat(start.hparams), {}):
                self.writer.file_writer.add_summary(summary)

    def identity(self) -> dict[str, Any]:
        return {"logdir": self.logdir}

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] == "sample":
            self.writer.add_text("samples", "\n\n".join(f"    {t}" for t in record["texts"]), record["step"])
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        self.writer.close()


def _after_earlier_event_files(logdir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the second its file was
    opened (then host, pid, a counter): a resumed run's file opened in the second its predecessor's was could
    be read first, and the purge it carries would not drop the steps the killed run wrote past its checkpoint.
    Waiting into the next second (a second at most, only where that second is now) keeps the order."""
    seconds = [int(part) for p in logdir.glob("events.out.tfevents.*")
               if len(parts := p.name.split(".")) > 3 and (part := parts[3]).isdigit()]
    if seconds and (wait := max(seconds) + 1 - time.time()) > 0:
        time.sleep(wait)


class _WandB:
    """A W&B run, reopened by its id with resume="allow". Online, W&B keeps a step's first values and drops those
    logged below its current step, so on resume the steps it already holds are not sent again. Offline it cannot
    know: each resume writes a new offline folder for the same id, and syncing them in order keeps the first."""

    def __init__(self, start: RunStart, saved: dict[str, Any]) -> None:
        import wandb

        # Checked here, where it is one line: online without a key, wandb.init would prompt at a terminal.
        if wandb.setup().settings.mode not in ("offline", "dryrun", "disabled") and not wandb.login(
                prompt=False, verify=False):
            raise NanoGPTError("--report-to=wandb: not logged in to W&B; run `wandb login` (or set WANDB_API_KEY), "
                               "or set WANDB_MODE=offline to log locally and `wandb sync` later")
        try:  # a new run takes the id W&B gives it; a resumed one has its config already
            self.run = wandb.init(project=saved.get("project", start.project), name=saved.get("name", start.name),
                                  id=saved.get("id"), resume="allow", dir=str(start.checkpoint_dir),
                                  config=None if saved else start.hparams)
        except wandb.errors.UsageError as e:  # a setting W&B refuses: the user's to fix
            raise NanoGPTError(f"--report-to=wandb: {e}") from e
        self.skip_below = self.run.step  # the next step W&B takes (0 offline, where it cannot know)
        self.table = wandb.Table

    def identity(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project, "name": self.run.name}

    def log(self, record: dict[str, Any]) -> None:
        if record["step"] >= self.skip_below:
            _log_to_run(self.run, self.table, record)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    """A Trackio run, local unless TRACKIO_SPACE_ID says otherwise. A new run is a new Trackio run even where
    one of the same name exists (an --overwrite); a resumed one is reopened by name (its newest run of that name).
    Its store keeps every row it is sent, so on resume the steps it already holds are not sent again."""

    def __init__(self, start: RunStart, saved: dict[str, Any]) -> None:
        import trackio

        self.run = trackio.init(project=saved.get("project", start.project), name=saved.get("name", start.name),
                                config=None if saved else start.hparams, resume="allow" if saved else "never",
                                embed=False, auto_log_cpu=False, auto_log_gpu=False)
        last = trackio.SQLiteStorage.get_max_step_for_run(self.run.project, run_id=self.run.id) if saved else None
        self.skip_through = -1 if last is None else last
        self.table = trackio.Table

    def identity(self) -> dict[str, Any]:
        return {"project": self.run.project, "name": self.run.name}

    def log(self, record: dict[str, Any]) -> None:
        if record["step"] > self.skip_through:
            _log_to_run(self.run, self.table, record)

    def close(self) -> None:
        self.run.finish()


def _log_to_run(run: Any, table: Any, record: dict[str, Any]) -> None:
    """A record into a W&B-style run (W&B's or Trackio's `log`): samples as a table, the rest as scalars."""
    if record["kind"] == "sample":
        run.log({"samples": table(columns=["sample"], data=[[t] for t in record["texts"]])}, step=record["step"])
    elif scalars := _scalars(record):
        run.log(scalars, step=record["step"])


_OPENERS = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio}


class Trackers:
    """The open trackers, fed from one background thread through a queue."""

    def __init__(self, opened: dict[str, Any]) -> None:
        self.opened = opened
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="nano-gpt-trackers", daemon=True)
        self._thread.start()

    def identities(self) -> dict[str, dict[str, Any]]:
        """Each tracker's run, to reopen it on resume: kept in the checkpoint and the log."""
        return {name: tracker.identity() for name, tracker in self.opened.items()}

    def send(self, record: dict[str, Any]) -> None:
        """Queue a log record (the step does not wait for any tracker)."""
        self._queue.put(record)

    def _drain(self) -> None:
        """Deliver records until `close`, then close each tracker (W&B and Trackio flush their own queues)."""
        while (record := self._queue.get()) is not None:
            for name, tracker in list(self.opened.items()):
                try:
                    tracker.log(record)
                except Exception as e:  # noqa: BLE001 - a tracker never stops the run: any failure drops it
                    logger.warning("%s failed at step %d (%s: %s); training goes on without it", name,
                                   record["step"], type(e).__name__, e)
                    del self.opened[name]
        for name, tracker in self.opened.items():
            try:
                tracker.close()
            except Exception as e:  # noqa: BLE001 - the run has finished; its checkpoint and log are safe
                logger.warning("%s failed while closing (%s: %s)", name, type(e).__name__, e)

    def close(self, timeout: float = 120.0) -> None:
        """Deliver what is queued and close the trackers, waiting at most `timeout` seconds (a tracker whose
        network is gone may retry for far longer; the checkpoint and log are written by then)."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("trackers still busy after %.0f s; leaving without their last records", timeout)


def _import(name: str) -> None:
    """Fail before step 0, in one line, when a tracker's package is missing."""
    try:
        __import__(name)
    except ImportError as e:
        raise NanoGPTError(f"--report-to={name} needs the {name} package: pip install \"nano-gpt[{name}]\" "
                           f"({e})") from e


def open_trackers(names: tuple[str, ...], start: RunStart, saved: dict[str, dict[str, Any]], *,
                  is_main: bool = True) -> Trackers | None:
    """Open each named tracker (continuing the runs in `saved` on resume), or None when none is asked for and on
    every process but the main one (rank 0 speaks for a torchrun launch).

    A missing package or login is a NanoGPTError; any other failure to start is one warning, and the run goes
    on without that tracker.
    """
    if not names or not is_main:
        return None
    for name in names:
        _import(name)
    opened = {}
    for name in names:
        try:
            opened[name] = _OPENERS[name](start, saved.get(name, {}))
        except NanoGPTError:
            for tracker in opened.values():
                tracker.close()
            raise
        except Exception as e:  # noqa: BLE001 - a tracker never stops the run
            logger.warning("%s could not start (%s: %s); training goes on without it", name, type(e).__name__, e)
    for name in opened:
        logger.info("reporting to %s: %s", name, json.dumps(opened[name].identity()))
    return Trackers(opened)


def default_run_name(checkpoint_dir: str) -> str:
    """The checkpoint folder's name: one run per folder."""
    return Path(os.path.abspath(checkpoint_dir)).name
