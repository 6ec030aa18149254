"""`nano-gpt plot` reads the text logs of the seed project (allenporter/nano-gpt), so its users overlay old
runs with new ones.

The seed's trainer writes one line per record, "kind: key: value | key: value | ...", with its numbers
already formatted: a train line per step, a val line every eval (and at step 0), and after it a hellaswag
line that carries no step (its accuracy is the per-token-normalised one).
"""

import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from nano_gpt.errors import NanoGPTError
from nano_gpt.runlog import read_log, summarize


def _seed_line(kind: str, **fields: object) -> str:
    """One record as the seed writes it: field order kept, ' | ' between fields."""
    return f"{kind}: " + " | ".join(f"{key.replace('_per_', '/')}: {value}" for key, value in fields.items())


def seed_log(path: Path, steps: int = 6, eval_every: int = 3) -> Path:
    lines = []
    for step in range(steps):
        if step % eval_every == 0 or step == steps - 1:
            lines.append(_seed_line("val", step=step, loss=f"{10.5 - step * 0.5:0.4f}"))
            if step:  # the seed scores HellaSwag from the first eval after step 0
                lines.append(_seed_line("hellaswag", accuracy=f"{0.25 + step / 100:0.4f}", total=200,
                                        correct=int(200 * (0.25 + step / 100))))
        loss, dt = 10.9 - step * 0.4, 388.06 + step
        lines.append(_seed_line("train", step=step, loss=f"{loss:0.4f}", norm=f"{5.5 - step * 0.1:0.4f}",
                                dt=f"{dt:0.2f}ms", tok_per_sec=f"{524288 / dt * 1000:0.2f}", lr=f"{6e-4 * (step + 1) / 6:0.6f}"))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_seed_format_is_what_its_trainer_writes(tmp_path: Path) -> None:
    text = seed_log(tmp_path / "train.log").read_text().splitlines()
    assert text[0] == "val: step: 0 | loss: 10.5000"
    assert text[1] == "train: step: 0 | loss: 10.9000 | norm: 5.5000 | dt: 388.06ms | tok/sec: 1351048.81 | lr: 0.000100"
    assert text[4:6] == ["val: step: 3 | loss: 9.0000", "hellaswag: accuracy: 0.2800 | total: 200 | correct: 56"]


def test_a_seed_log_reads_as_records_of_our_kinds(tmp_path: Path) -> None:
    log = read_log(seed_log(tmp_path / "train.log"))
    assert [r["step"] for r in log.records["train"]] == list(range(6))
    assert log.records["train"][1] == {"kind": "train", "step": 1, "loss": 10.5, "norm": 5.4, "dt_ms": 389.06,
                                       "tok_per_sec": 1347576.21, "lr": 0.0002}
    assert [(r["step"], r["val_loss"]) for r in log.records["val"]] == [(0, 10.5), (3, 9.0), (5, 8.0)]
    # a hellaswag line takes the step of the val line before it; the seed's accuracy is acc_norm
    assert log.records["hellaswag"] == [{"kind": "hellaswag", "step": 3, "acc_norm": 0.28, "total": 200},
                                        {"kind": "hellaswag", "step": 5, "acc_norm": 0.3, "total": 200}]
    summary = summarize(log)
    assert (summary.last_step, summary.final_train_loss, summary.best_val_loss, summary.hellaswag_acc_norm) == (
        5, 8.9, 8.0, 0.3)
    assert summary.tokens is None  # the seed logged no token counts


def test_console_output_a_seed_user_kept_reads_too(tmp_path: Path) -> None:
    """`nano-gpt train ... | tee train.log` in the seed also kept its sample lines."""
    path = seed_log(tmp_path / "train.log")
    lines = path.read_text().splitlines()
    lines.insert(3, "rank 0 sample 0: Hello, I'm a language model, and val: step: 99 | loss: 1.0")
    path.write_text("\n".join(lines) + "\n")
    assert [r["step"] for r in read_log(path).records["val"]] == [0, 3, 5]


def test_an_unfinished_last_seed_line_is_skipped(tmp_path: Path) -> None:
    """The seed wrote the newline after the record: a last line without one is being written, or was cut."""
    path = seed_log(tmp_path / "train.log")
    path.write_text(path.read_text() + "train: step: 6 | loss: 8.")  # parses, but is not the whole line
    assert read_log(path).records["train"][-1]["step"] == 5


@pytest.mark.parametrize("line", ["train: step: -1 | loss: 9.0", "train: step: 1e3 | loss: 9.0",
                                  "val: step: 3 | loss: low", "hellaswag: accuracy: 0.3 | total: ²"])
def test_a_seed_line_whose_numbers_do_not_parse_names_the_line(tmp_path: Path, line: str) -> None:
    path = seed_log(tmp_path / "train.log")
    path.write_text(path.read_text() + line + "\n" + "train: step: 9 | loss: 7.0\n")
    with pytest.raises(NanoGPTError, match=r"train\.log:\d+: a (train|val|hellaswag) line of the seed project's log"):
        read_log(path)


def test_plot_overlays_a_seed_log_with_a_new_run(tmp_path: Path) -> None:
    seed_log(tmp_path / "old.log")
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"kind": "train", "step": s, "tokens": 8192 * (s + 1), "loss": 10.8 - s * 0.3, "lr": 1e-3} for s in range(4)]))
    result = run_cli("plot", "old.log", "new.jsonl", "--output=both.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "old: last step 5\n  final train loss  8.9000\n  best val loss     8.0000 (step 5)" in result.stdout
    assert "new: last step 3, 32.8k tokens" in result.stdout


def test_a_bad_seed_log_through_the_cli_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "old.log").write_text("val: step: 0 | loss: 10.9\ntrain: step: zero | loss: 10.8\n")
    assert_one_line_error(run_cli("plot", "old.log", cwd=tmp_path), "old.log:2", "seed project")
    assert not (tmp_path / "artifacts").exists()
