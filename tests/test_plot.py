"""`nano-gpt plot`, `nano_gpt.plot` and `nano_gpt.runlog`: reading training logs, drawing them, summarising them."""

import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from nano_gpt.errors import NanoGPTError
from nano_gpt.plot import auto_smoothing, ema, plot_logs, save_figure
from nano_gpt.runlog import read_log, read_logs, summarize

NOTEBOOK = Path(__file__).resolve().parents[1] / "script" / "log_analysis.ipynb"
BATCH = 8192


def write_log(path: Path, steps: int = 120, *, val: bool = True, hellaswag: bool = True, eval_every: int = 20) -> Path:
    """A synthetic log as `nano-gpt train` writes it: a loss falling from 11 to about 3, a warm-up then
    cosine learning rate, and evaluations every `eval_every` steps and at the last step."""
    records: list[dict] = [{"kind": "config", "step": 0, "model": "gpt2-xxs", "total_batch_size": BATCH}]
    for step in range(steps):
        tokens = (step + 1) * BATCH
        loss = 3.0 + 8.0 * math.exp(-step / 10) + 0.05 * math.sin(step)
        if step % eval_every == 0 or step == steps - 1:
            if val:
                records.append({"kind": "val", "step": step, "tokens": tokens, "val_loss": loss + 0.1 - step / 1e4})
            if hellaswag:
                records.append({"kind": "hellaswag", "step": step, "tokens": tokens, "acc": 0.25 + step / 2e3,
                                "acc_norm": 0.26 + step / 2e3, "total": 100})
        lr = 6e-4 * min(1.0, (step + 1) / 10) * (0.55 + 0.45 * math.cos(math.pi * step / steps))
        records.append({"kind": "train", "step": step, "tokens": tokens, "loss": loss, "norm": 1.0, "lr": lr,
                        "dt_ms": 100.0 + step, "tok_per_sec": BATCH / (0.1 + step / 1e3), "mfu": None})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def assert_png(path: Path, min_bytes: int = 20_000) -> tuple[int, int]:
    """A real PNG (signature and IHDR chunk) of non-trivial size; returns (width, height)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    assert data[12:16] == b"IHDR"
    assert len(data) >= min_bytes, len(data)
    return struct.unpack(">II", data[16:24])


def test_synthetic_run_plots_to_a_png_with_every_panel_drawn(tmp_path: Path) -> None:
    log = read_log(write_log(tmp_path / "run.jsonl"))
    fig = plot_logs([log], baseline_loss=3.2924, baseline_hellaswag=0.2955)
    out = save_figure(fig, tmp_path / "nested" / "folder" / "run.png")
    assert assert_png(out) == (1950, 1275)  # 13 x 8.5 inches at 150 dpi
    ax_step, ax_tokens, ax_hs, ax_lr = fig.axes
    assert [line.get_label() for line in ax_step.lines if not line.get_label().startswith("_")] == [
        "train (EMA 0.583)", "val", "baseline 3.2924"]
    assert max(ax_tokens.lines[0].get_xdata()) == 120 * BATCH
    assert [line.get_label() for line in ax_hs.lines] == ["run", "baseline 0.2955"]
    assert len(ax_lr.lines[0].get_xdata()) == 120
    assert not any(ax.texts for ax in fig.axes)  # no "no ... records" notes


def test_cli_overlays_several_logs_and_prints_each_runs_summary(tmp_path: Path) -> None:
    write_log(tmp_path / "a.jsonl")
    write_log(tmp_path / "b.jsonl", steps=60, hellaswag=False)
    out = tmp_path / "plots" / "compare.png"
    result = run_cli("plot", "a.jsonl", "b.jsonl", f"--output={out}", "--label=short", "--label=long",
                     "--baseline-loss=3.2924", "--baseline-hellaswag=0.2955", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert result.stdout.startswith(f"wrote {out}\nshort: last step 119, 983k tokens\n"), result.stdout
    assert "long: last step 59" in result.stdout
    assert "  HellaSwag         -\n" in result.stdout  # b has none


def test_default_output_is_artifacts_train_log_png(tmp_path: Path) -> None:
    write_log(tmp_path / "train_log.jsonl", steps=30)
    result = run_cli("plot", "train_log.jsonl", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "artifacts" / "train-log.png")


def test_log_without_validation_hellaswag_or_some_fields_still_plots(tmp_path: Path) -> None:
    path = tmp_path / "sparse.jsonl"
    lines = [{"kind": "train", "step": s, "loss": 10.0 - s / 10, "mfu": None} for s in range(30)]
    lines[3]["lr"] = 1e-4  # only one record has a learning rate; none has tokens
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    fig = plot_logs([read_log(path)])
    assert_png(save_figure(fig, tmp_path / "sparse.png"))
    ax_step, ax_tokens, ax_hs, _ = fig.axes
    assert [t.get_text() for t in ax_tokens.texts] == ["no records with token counts"]
    assert [t.get_text() for t in ax_hs.texts] == ["no HellaSwag records"]
    assert [line.get_label() for line in ax_step.lines if not line.get_label().startswith("_")] == ["train"]


def test_summary_has_final_train_loss_best_val_loss_and_last_hellaswag(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    records = [
        {"kind": "train", "step": 0, "tokens": 100, "loss": 9.0, "tok_per_sec": 10.0},
        {"kind": "val", "step": 0, "tokens": 100, "val_loss": 8.5},
        {"kind": "hellaswag", "step": 0, "tokens": 100, "acc": 0.2, "acc_norm": 0.24, "total": 50},
        {"kind": "train", "step": 1, "tokens": 200, "loss": 4.0, "tok_per_sec": 30.0},
        {"kind": "val", "step": 1, "tokens": 200, "val_loss": 4.25},
        {"kind": "train", "step": 2, "tokens": 300, "loss": 4.5, "tok_per_sec": 20.0},
        {"kind": "val", "step": 2, "tokens": 300, "val_loss": 4.5},
        {"kind": "hellaswag", "step": 2, "tokens": 300, "acc": 0.25, "acc_norm": 0.28, "total": 50},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarize(read_log(path))
    assert (summary.final_train_loss, summary.best_val_loss, summary.best_val_step) == (4.5, 4.25, 1)
    assert (summary.hellaswag_acc_norm, summary.hellaswag_step, summary.hellaswag_total) == (0.28, 2, 50)
    assert (summary.last_step, summary.tokens, summary.median_tok_per_sec) == (2, 300, 20.0)
    assert str(summary) == (
        "run: last step 2, 300 tokens\n"
        "  final train loss  4.5000\n"
        "  best val loss     4.2500 (step 1)\n"
        "  HellaSwag         0.2800 acc_norm (step 2, 50 examples)\n"
        "  throughput        20 tok/s (median)"
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"kind": "train", "step": 2, "loss": 3.', "not valid JSON"),
        ('[1, 2, 3]', "expected a JSON object"),
        ('{"kind": "train", "loss": 3.0}', 'non-negative integer "step"'),
        ('{"kind": "train", "step": "3", "loss": 3.0}', 'non-negative integer "step"'),
        ('{"step": 3, "loss": 3.0}', 'string "kind"'),
        ('{"kind": "val", "step": 3, "val_loss": "low"}', '"val_loss" must be a number'),
    ],
)
def test_malformed_line_is_an_error_naming_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = write_log(tmp_path / "run.jsonl", steps=3, val=False, hellaswag=False)
    good = path.read_text().splitlines()
    path.write_text("\n".join([*good[:2], line, *good[2:]]) + "\n")
    with pytest.raises(NanoGPTError, match="run.jsonl:3: ") as error:
        read_log(path)
    assert fragment in str(error.value)


def test_cli_malformed_line_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"kind": "train", "step": 0, "loss": 9.0}\n\n{oops}\n')
    assert_one_line_error(run_cli("plot", "bad.jsonl", cwd=tmp_path), "bad.jsonl:3:", "not valid JSON")
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    ("files", "args", "fragments"),
    [
        (["run.jsonl"], ["missing.jsonl"], ["training log missing.jsonl not found", "nano-gpt train"]),
        (["run.jsonl", "empty.jsonl"], ["run.jsonl", "empty.jsonl"], ["empty.jsonl holds no train"]),
        (["run.jsonl"], ["run.jsonl", "--label=a", "--label=b"], ["2 --label for 1 log files"]),
        (["run.jsonl"], ["run.jsonl", "--output=plot.xyz"], ["cannot write plot.xyz", ".png"]),
        (["run.jsonl"], ["run.jsonl", "--smoothing=1"], ["smoothing must be", "below 1"]),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path: Path, files: list[str], args: list[str], fragments: list[str]) -> None:
    for name in files:
        if name == "empty.jsonl":
            (tmp_path / name).write_text("\n")
        else:
            write_log(tmp_path / name, steps=5)
    assert_one_line_error(run_cli("plot", *args, cwd=tmp_path), *fragments)


def test_missing_matplotlib_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = read_log(write_log(tmp_path / "run.jsonl", steps=5))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(NanoGPTError, match=r"^matplotlib is not installed; pip install 'nano-gpt\[plot\]'$"):
        plot_logs([log])
    summarize(log)  # reading and summarising need no matplotlib


def test_cli_without_matplotlib_prints_one_line_error(tmp_path: Path) -> None:
    write_log(tmp_path / "run.jsonl", steps=5)
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['nano-gpt', 'plot', 'run.jsonl']; "
            "from nano_gpt.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "matplotlib is not installed", "pip install 'nano-gpt[plot]'")


def test_unfinished_last_line_of_a_live_log_is_skipped(tmp_path: Path) -> None:
    path = write_log(tmp_path / "live.jsonl", steps=4, val=False, hellaswag=False)
    path.write_text(path.read_text() + '{"kind": "train", "step": 4, "lo')
    assert [r["step"] for r in read_log(path).records["train"]] == [0, 1, 2, 3]


def test_records_are_sorted_by_step_and_a_later_record_for_a_step_wins(tmp_path: Path) -> None:
    path = tmp_path / "resumed.jsonl"
    records = [{"kind": "train", "step": s, "loss": float(s)} for s in (0, 1, 2, 3)]
    records += [{"kind": "train", "step": 2, "loss": 20.0}, {"kind": "unknown", "step": 9}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_log(path).series("train", "loss") == ([0, 1, 2, 3], [0.0, 1.0, 20.0, 3.0])


def test_labels_default_to_file_stems_and_clashing_stems_get_their_folder(tmp_path: Path) -> None:
    for folder in ("run1", "run2"):
        (tmp_path / folder).mkdir()
        write_log(tmp_path / folder / "train_log.jsonl", steps=3)
    write_log(tmp_path / "other.jsonl", steps=3)
    logs = read_logs([tmp_path / "run1" / "train_log.jsonl", tmp_path / "run2" / "train_log.jsonl",
                      tmp_path / "other.jsonl"])
    assert [log.label for log in logs] == ["run1/train_log", "run2/train_log", "other"]


def _mean_error(curve: list[float], clean: list[float]) -> float:
    return sum(abs(a - b) for a, b in zip(curve, clean, strict=True)) / len(clean)


def test_smoothing_a_noisy_loss_curve_brings_it_closer_to_the_clean_one() -> None:
    rng = random.Random(0)
    clean = [3.0 + 8.0 * math.exp(-step / 1000) for step in range(2000)]
    noisy = [v + rng.gauss(0, 0.3) for v in clean]
    smoothed = ema(noisy, auto_smoothing(len(noisy)))
    assert len(smoothed) == len(noisy)
    assert _mean_error(smoothed, clean) < 0.7 * _mean_error(noisy, clean)  # it lags where the loss falls fast
    assert _mean_error(smoothed[1000:], clean[1000:]) < 0.5 * _mean_error(noisy[1000:], clean[1000:])
    assert ema(noisy, 0.0) == noisy  # 0 is no smoothing


def test_a_smoothed_constant_stays_constant_from_the_first_point() -> None:
    assert ema([5.0] * 100, 0.99) == pytest.approx([5.0] * 100)  # no pull towards zero at the start


def test_auto_smoothing_leaves_short_runs_raw_and_smooths_longer_runs_more() -> None:
    assert auto_smoothing(10) == 0.0
    weights = [auto_smoothing(n) for n in (100, 1_000, 19_073)]
    assert 0 < weights[0] < weights[1] < weights[2] < 1


def test_zoom_cuts_off_the_first_steep_drop_of_the_loss(tmp_path: Path) -> None:
    log = read_log(write_log(tmp_path / "run.jsonl", steps=200))
    zoomed_bottom, zoomed_top = plot_logs([log]).axes[0].get_ylim()
    full_bottom, full_top = plot_logs([log], zoom=False).axes[0].get_ylim()
    assert full_top > 11 and zoomed_top < 5
    assert 2.8 < zoomed_bottom < 3.0 and full_bottom < 3.0  # the end of training stays in view


def _notebook_code() -> list[str]:
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None  # committed without outputs
    # IPython line magics (%matplotlib inline) are not Python; Jupyter runs them itself.
    return ["".join(line for line in cell["source"] if not line.startswith("%"))
            for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_notebook_is_nbformat_4_and_its_code_uses_the_library() -> None:
    cells = _notebook_code()
    for i, source in enumerate(cells):
        compile(source, f"{NOTEBOOK.name}[{i}]", "exec")
    code = "\n".join(cells)
    assert "from nano_gpt.plot import" in code
    for name in ("read_logs(", "plot_logs(", "summarize("):
        assert name in code


def test_notebook_runs_on_a_log_where_train_writes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "checkpoints").mkdir()
    write_log(tmp_path / "checkpoints" / "train_log.jsonl")
    (tmp_path / "script").mkdir()
    monkeypatch.chdir(tmp_path / "script")  # Jupyter starts in the notebook's folder
    namespace: dict = {}
    for i, source in enumerate(_notebook_code()):
        exec(compile(source, f"{NOTEBOOK.name}[{i}]", "exec"), namespace)
    assert "train_log: last step 119" in capsys.readouterr().out
    assert len(namespace["fig"].axes) == 2 and namespace["logs"][0].config["model"] == "gpt2-xxs"


def test_the_image_replaces_a_link_and_never_writes_through_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plot.png").symlink_to(tmp_path / "notes.txt")
    write_log(tmp_path / "run.jsonl", steps=5)
    result = run_cli("plot", "run.jsonl", "--output=plot.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "plot.png").is_symlink() and (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "plot.png", "run.jsonl"]  # no temp left
