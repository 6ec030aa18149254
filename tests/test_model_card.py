"""The model card in every export: Hub metadata, and only numbers the checkpoint or its run's log hold."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import assert_one_line_error, run_cli, write_hellaswag_file
from nano_gpt.checkpoint import read_checkpoint
from nano_gpt.config import GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.model_card import CardFacts, facts_from_checkpoint, read_model_card, render_model_card
from nano_gpt.train import TrainConfig, train
from nano_gpt.runlog import read_log


@pytest.fixture(scope="module")
def run_dir(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run with validation and HellaSwag every 2 steps and checkpoints after steps 2 and 3."""
    root = tmp_path_factory.mktemp("card-run")
    config = TrainConfig(model="gpt2-xxs", dataset="tinyshakespeare", dataset_dir=str(tinyshakespeare_dir),
                         device="cpu", sequence_length=32, micro_batch_size=4, total_batch_size=128, max_steps=4,
                         warmup_steps=1, eval_steps=2, validation_steps=1, hellaswag_samples=4,
                         hellaswag_file=str(write_hellaswag_file(root / "hellaswag.jsonl")), checkpoint_steps=2,
                         compile=False, dtype="float32", checkpoint_dir=str(root / "checkpoints"))
    train(config)
    return root / "checkpoints"


@pytest.fixture(scope="module")
def exported_run(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`nano-gpt export` of the run's last checkpoint, its log beside it."""
    export = tmp_path_factory.mktemp("card-export") / "export"
    result = run_cli("export", "--checkpoint", str(run_dir / "checkpoint_000003.bin"), "--export-dir", str(export))
    assert result.returncode == 0, result.stderr
    return export


def _split(card: str) -> tuple[dict, str]:
    """(front matter, Markdown body) of a card; fails unless it opens with a YAML block between --- lines."""
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def _rows(body: str) -> dict[str, str]:
    """The card's two-column table rows, as {label: value}."""
    return dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|$", body, re.M))


def _card(checkpoint: Path, **kwargs: object) -> str:
    return render_model_card(facts_from_checkpoint(read_checkpoint(checkpoint)), name="run", **kwargs)


def _logged(log_dir: Path, kind: str, step: int) -> dict:
    return next(r for r in read_log(log_dir / "train_log.jsonl").records[kind] if r["step"] == step)


def test_the_card_opens_with_hub_metadata(run_dir: Path) -> None:
    meta, body = _split(_card(run_dir / "checkpoint_000003.bin"))
    assert meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"gpt2", "text-generation"} <= set(meta["tags"])
    assert "datasets" not in meta and "base_model" not in meta  # TinyShakespeare is no Hub dataset; trained from scratch
    assert body.lstrip().startswith("# run\n")
    assert {"## Model", "## Training", "## Results", "## Training settings", "## Usage"} <= set(re.findall(r"^## .+$", body, re.M))


def test_the_cards_numbers_equal_the_checkpoints_and_its_logs(run_dir: Path, exported_run: Path) -> None:
    checkpoint = run_dir / "checkpoint_000003.bin"
    state = torch.load(checkpoint, weights_only=True)
    metrics = state.get("metrics", {})  # newer checkpoints carry their own; the log is the fallback
    rows = _rows(_split(_card(checkpoint))[1])
    train_record, val, hellaswag = (_logged(run_dir, kind, 3) for kind in ("train", "val", "hellaswag"))
    assert rows["Tokens seen"] == f"{4 * 128:,}" == f"{train_record['tokens']:,}"
    assert rows["Optimizer steps"] == f"{state['step'] + 1} of 4 scheduled"
    assert rows["Train loss (last step)"] == f"{metrics.get('train_loss', train_record['loss']):.4f}"
    assert rows["Validation loss"].split()[0] == f"{metrics.get('val_loss', val['val_loss']):.4f}"
    assert rows["HellaSwag acc_norm"].split()[0] == f"{metrics.get('hellaswag_acc_norm', hellaswag['acc_norm']):.4f}"
    assert rows["HellaSwag acc"] == f"{metrics.get('hellaswag_acc', hellaswag['acc']):.4f}"
    assert rows["Layers"] == "4" and rows["Attention heads"] == "4" and rows["Embedding size"] == "64"
    assert rows["Context length"] == "1024 tokens"
    assert rows["Dataset"].startswith("TinyShakespeare")
    assert rows["`max_lr`"] == f"`{state['train_config']['max_lr']}`"
    assert rows["`seed`"] == "`1337`" and rows["`total_batch_size`"] == "`128`"
    assert "`dataset_dir`" not in rows and "`checkpoint_dir`" not in rows  # paths on the training machine
    run = state.get("run") or read_log(run_dir / "train_log.jsonl").config
    assert (rows["Device"], rows["Precision"], rows["Processes"]) == (f"`{run['device']}`", f"`{run['dtype']}`", "1")
    assert run["device"] == "cpu" and run["dtype"] in ("fp32", "float32")

    exported = sum(t.numel() for t in load_file(exported_run / "model.safetensors").values())
    assert _rows((exported_run / "README.md").read_text())["Parameters"].split()[0] == f"{exported:,}"


def test_an_earlier_checkpoint_is_described_at_its_own_step(run_dir: Path) -> None:
    """The log runs on past checkpoint 2; its card must not claim the run's later numbers."""
    rows = _rows(_split(_card(run_dir / "checkpoint_000002.bin"))[1])
    assert rows["Optimizer steps"] == "3 of 4 scheduled" and rows["Tokens seen"] == f"{3 * 128:,}"
    assert rows["Train loss (last step)"] == f"{_logged(run_dir, 'train', 2)['loss']:.4f}"
    assert rows["Validation loss"] == f"{_logged(run_dir, 'val', 2)['val_loss']:.4f} (step 2)"
    assert rows["HellaSwag acc_norm"] == f"{_logged(run_dir, 'hellaswag', 2)['acc_norm']:.4f} (4 examples, step 2)"


def test_numbers_the_checkpoint_records_are_used_over_the_log(run_dir: Path, tmp_path: Path) -> None:
    state = torch.load(run_dir / "checkpoint_000003.bin", weights_only=True)
    state["metrics"] = {"tokens": 512, "train_loss": 1.23456, "val_loss": 2.5, "hellaswag_acc": 0.25,
                        "hellaswag_acc_norm": 0.75}
    state["run"] = {"device": "cuda:0", "dtype": "bfloat16", "world_size": 8, "nano_gpt_version": "9.9.9"}
    shutil.copy(run_dir / "train_log.jsonl", tmp_path / "train_log.jsonl")
    torch.save(state, tmp_path / "checkpoint_000003.bin")
    rows = _rows(_split(_card(tmp_path / "checkpoint_000003.bin"))[1])
    assert rows["Train loss (last step)"] == "1.2346" and rows["Validation loss"] == "2.5000"
    assert rows["HellaSwag acc_norm"] == "0.7500" and rows["HellaSwag acc"] == "0.2500"
    assert (rows["Device"], rows["Precision"], rows["Processes"], rows["nano-gpt"]) == ("`cuda:0`", "`bfloat16`", "8", "9.9.9")


def test_what_the_checkpoint_does_not_know_is_left_out(run_dir: Path, tmp_path: Path) -> None:
    state = torch.load(run_dir / "checkpoint_000003.bin", weights_only=True)
    for key in ("metrics", "run"):
        state.pop(key, None)
    torch.save(state, tmp_path / "checkpoint_000003.bin")  # no log beside it
    body = _split(_card(tmp_path / "checkpoint_000003.bin"))[1]
    assert "## Results" not in body and "## Hardware" not in body
    assert not re.search(r"loss|HellaSwag|cuda|bfloat16", body.split("## Training settings")[0])
    assert _rows(body)["Tokens seen"] == "512"  # steps x total_batch_size, as the trainer counts


def test_another_runs_log_beside_the_checkpoint_is_not_used(run_dir: Path, tmp_path: Path) -> None:
    state = torch.load(run_dir / "checkpoint_000003.bin", weights_only=True)
    for key in ("metrics", "run"):
        state.pop(key, None)
    state["train_config"] = {**state["train_config"], "seed": 7}  # a different run wrote this checkpoint
    torch.save(state, tmp_path / "checkpoint_000003.bin")
    shutil.copy(run_dir / "train_log.jsonl", tmp_path / "train_log.jsonl")
    body = _split(_card(tmp_path / "checkpoint_000003.bin"))[1]
    assert "## Results" not in body and "Validation loss" not in body


def test_another_projects_checkpoint_gets_a_card_of_the_model_only(tmp_path: Path) -> None:
    """The seed's checkpoints have a `step` and a `train_config` of their own meaning; none of it is reported."""
    from test_peer_checkpoints import save_seed_checkpoint, tiny_model

    checkpoint = save_seed_checkpoint(tmp_path / "checkpoint_019072.bin", tiny_model())
    (tmp_path / "train_log.jsonl").write_text(json.dumps({"kind": "train", "step": 19072, "loss": 9.99}) + "\n")
    body = _split(_card(checkpoint))[1]
    assert "## Training" not in body and "## Results" not in body and "9.99" not in body
    assert _rows(body)["Layers"] == "2"


def test_a_fine_tuned_run_names_its_base_model_and_hub_dataset() -> None:
    facts = CardFacts(config=GPTConfig(), parameters=124_439_808, step=99,
                      train_config={"pretrained": "gpt2", "dataset": "finewebedu", "max_steps": 100})
    meta, body = _split(render_model_card(facts, name="my-gpt2", license="apache-2.0"))
    assert meta["base_model"] == "openai-community/gpt2"
    assert meta["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert meta["license"] == "apache-2.0"
    assert "fine-tuned from `gpt2`" in body and "124.4M parameters" in body
    assert _rows(body)["Optimizer steps"] == "100 of 100 scheduled"


def test_the_usage_snippets_load_the_repo_id_when_pushing() -> None:
    facts = CardFacts(config=GPTConfig(), parameters=124_439_808)
    local = render_model_card(facts, name="export")
    pushed = render_model_card(facts, name="my-model", repo_id="alice/my-model")
    assert 'model="./export"' in local and "--pretrained=./export " in local
    assert 'model="alice/my-model"' in pushed and "--pretrained=alice/my-model " in pushed
    assert "./export" not in pushed and "\n# my-model\n" in pushed


def test_the_export_holds_the_card_and_the_training_plot(exported_run: Path) -> None:
    pytest.importorskip("matplotlib")
    assert (exported_run / "training_log.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    meta, body = _split((exported_run / "README.md").read_text())
    assert meta["pipeline_tag"] == "text-generation"
    assert "](training_log.png)" in body and 'model="./export"' in body


def test_a_model_without_its_log_has_no_plot(run_dir: Path, tmp_path: Path) -> None:
    shutil.copy(run_dir / "checkpoint_000003.bin", tmp_path / "checkpoint_000003.bin")
    result = run_cli("export", "--checkpoint", str(tmp_path / "checkpoint_000003.bin"), "--export-dir",
                     str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "export" / "training_log.png").exists()
    assert "training_log.png" not in (tmp_path / "export" / "README.md").read_text()


def test_pretrained_weights_get_a_card_naming_their_source(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    result = run_cli("export", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--export-dir", str(tmp_path / "re"))
    assert result.returncode == 0, result.stderr
    meta, body = _split((tmp_path / "re" / "README.md").read_text())
    assert meta["library_name"] == "transformers"
    rows = _rows(body)
    assert rows["Source"] == f"`{tiny_hf_gpt2_vocab_dir.name}`" and rows["Layers"] == "2"
    assert "## Training" not in body and "## Results" not in body


def test_model_card_option_puts_the_users_file_in_place(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "card.md"
    mine.write_text("---\nlicense: other\n---\n# Mine ✓\n", encoding="utf-8")
    result = run_cli("export", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--export-dir", str(tmp_path / "re"),
                     f"--model-card={mine}")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "re" / "README.md").read_bytes() == mine.read_bytes()


def test_a_missing_model_card_file_is_one_line_and_nothing_is_written(tiny_hf_gpt2_vocab_dir: Path,
                                                                      tmp_path: Path) -> None:
    result = run_cli("export", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--export-dir", str(tmp_path / "re"),
                     f"--model-card={tmp_path / 'nope.md'}")
    assert_one_line_error(result, "--model-card", "nope.md")
    assert not (tmp_path / "re").exists()


@pytest.mark.parametrize("case", ["not utf-8", "a folder"])
def test_an_unreadable_model_card_file_is_a_user_error(case: str, tmp_path: Path) -> None:
    card = {"not utf-8": tmp_path / "latin1.md", "a folder": tmp_path}[case]
    (tmp_path / "latin1.md").write_bytes("# café".encode("latin-1"))
    with pytest.raises(NanoGPTError, match="--model-card"):
        read_model_card(card)
