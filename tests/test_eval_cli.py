"""`nano-gpt eval` end to end, in real processes."""

import json
import re
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli
from nano_gpt import load_pretrained
from nano_gpt.checkpoint import save_checkpoint
from nano_gpt.data import ShardLoader, prepare_dataset
from nano_gpt.eval import evaluate_hellaswag, load_hellaswag, validation_loss

ROWS = [
    {"ctx": "A man is sitting on a roof. He", "endings": ["is using wrap to wrap a pair of skis.",
     "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3},
    {"ctx": "[header] How to bake bread [title] Mix the flour. [step]", "endings": ["Add water slowly.",
     "Paint the wall blue.", "Drive to the sea.", "Sing a song."], "label": 0},
    {"ctx": "A woman holds a violin. She", "endings": ["plays a tune.", "eats the bow.", "swims away.", "sleeps."],
     "label": 0},
]


@pytest.fixture()
def hellaswag_file(tmp_path: Path) -> Path:
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_help_lists_the_options() -> None:
    result = run_cli("eval", "--help")
    assert result.returncode == 0
    for option in ("--pretrained", "--checkpoint", "--dataset", "--validation-steps", "--hellaswag-samples",
                   "--hellaswag-file", "--batch-size", "--json"):
        assert option in result.stdout


def test_debug_logs_the_running_accuracy_per_example_then_a_summary(tiny_hf_gpt2_vocab_dir: Path,
                                                                    hellaswag_file: Path) -> None:
    result = run_cli("--debug", "eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--hellaswag-file={hellaswag_file}",
                     "--validation-steps=0", "--device=cpu", "--dtype=fp32")
    assert result.returncode == 0, result.stderr
    running = re.findall(r"hellaswag: accuracy: (\d\.\d{4}) \| total: (\d+) \| correct: (\d+)", result.stderr)
    assert [int(total) for _, total, _ in running] == [1, 2, 3]
    assert all(float(acc) == pytest.approx(int(c) / int(t), abs=1e-4) for acc, t, c in running)
    expected = evaluate_hellaswag(load_pretrained(str(tiny_hf_gpt2_vocab_dir)), load_hellaswag(hellaswag_file), "cpu")
    assert int(running[-1][2]) == expected.correct_norm
    assert "hellaswag examples: 3" in result.stdout
    assert f"acc_norm: {expected.acc_norm:.4f}" in result.stdout and f"acc:      {expected.acc:.4f}" in result.stdout
    assert "val_loss: skipped" in result.stdout


def test_json_summary_for_the_first_n_examples(tiny_hf_gpt2_vocab_dir: Path, hellaswag_file: Path) -> None:
    result = run_cli("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--hellaswag-file={hellaswag_file}",
                     "--hellaswag_samples=2", "--validation-steps=0", "--batch-size=1", "--json", "--dtype=fp32")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = evaluate_hellaswag(load_pretrained(str(tiny_hf_gpt2_vocab_dir)), load_hellaswag(hellaswag_file, 2),
                                  "cpu")
    assert summary == {"examples": 2, "correct": expected.correct, "correct_norm": expected.correct_norm,
                       "acc": expected.acc, "acc_norm": expected.acc_norm, "val_loss": None, "validation_steps": 0}


def test_validation_loss_of_a_checkpoint_on_a_prepared_dataset(tmp_path: Path, tiny_hf_gpt2_vocab_dir: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The king shall ride at dawn. A horse, my lord! " * 300)
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=1000, num_workers=1)
    model = load_pretrained(str(tiny_hf_gpt2_vocab_dir))
    checkpoint = tmp_path / "checkpoint_000010.bin"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 10})
    result = run_cli("eval", f"--checkpoint={checkpoint}", f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}",
                     "--validation-steps=3", "--batch-size=2", "--sequence-length=16", "--hellaswag-samples=0", "--json",
                     "--dtype=fp32")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = validation_loss(model, ShardLoader(tmp_path / "ds", str(corpus), "validation", 2, 16), 3, "cpu")
    assert summary["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert (summary["examples"], summary["acc"], summary["validation_steps"]) == (0, None, 3)


def test_without_a_dataset_validation_is_skipped_with_an_info_line(tiny_hf_gpt2_vocab_dir: Path,
                                                                   hellaswag_file: Path) -> None:
    result = run_cli("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--hellaswag-file={hellaswag_file}",
                     "--hellaswag-samples=1")
    assert result.returncode == 0, result.stderr
    assert "validation loss: skipped; pass --dataset=NAME" in result.stderr  # an info line: logs go to stderr
    assert "hellaswag: accuracy" not in result.stdout + result.stderr  # per-example lines only under --debug
    assert "val_loss: skipped" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--hellaswag-file={d}/bad.jsonl"], ["bad.jsonl, line 2:", "not valid JSON"]),
        (["--hellaswag-file={d}/label.jsonl"], ["label.jsonl, line 1:", "label 7 is out of range"]),
        (["--hellaswag-file={d}/empty.jsonl"], ["empty.jsonl, line 1:", "empty"]),
        (["--hellaswag-samples=0", "--dataset=nothing-here", "--dataset-dir={d}"], ["nano-gpt prepare_dataset"]),
        (["--hellaswag-samples=0", "--dataset=x", "--sequence-length=999"], ["--sequence-length=999", "128"]),
        (["--hellaswag-samples=0", "--checkpoint=missing.bin"], ["not both"]),
        (["--hellaswag-samples=0", "--device=cuda"], ["CUDA is not available"]),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path: Path, tiny_hf_gpt2_vocab_dir: Path, args: list[str],
                                       fragments: list[str]) -> None:
    row = ROWS[0]
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n{oops\n")
    (tmp_path / "label.jsonl").write_text(json.dumps({**row, "label": 7}) + "\n")
    (tmp_path / "empty.jsonl").write_text("")
    args = [a.format(d=tmp_path) for a in args]
    result = run_cli("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", *args)
    assert_one_line_error(result, *fragments)


def test_offline_the_default_gpt2_is_a_one_line_hint_to_pass_a_folder() -> None:
    assert_one_line_error(run_cli("eval", "--hellaswag-samples=0", "--validation-steps=0"), "local folder")
