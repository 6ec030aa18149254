"""`nano-gpt export`: what we trained must load in `transformers` and behave exactly like our model."""

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel

import nano_gpt.export
from conftest import assert_one_line_error, run_cli
from nano_gpt import GPT, GPTConfig, generate, get_tokenizer, load_pretrained
from nano_gpt.checkpoint import load_model
from nano_gpt.errors import NanoGPTError
from nano_gpt.export import export_model
from nano_gpt.tokenizer import VOCAB_SIZE
from nano_gpt.train import TrainConfig, train

EXPORTED_FILES = {"model.safetensors", "config.json", "generation_config.json", "vocab.json", "merges.txt",
                  "tokenizer.json", "tokenizer_config.json", "README.md"}


@pytest.fixture(scope="module")
def trained_checkpoint(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `nano-gpt train` run: gpt2-xxs (padded 50304 vocabulary), a few steps on TinyShakespeare."""
    config = TrainConfig(model="gpt2-xxs", dataset="tinyshakespeare", dataset_dir=str(tinyshakespeare_dir),
                         device="cpu", sequence_length=32, micro_batch_size=4, total_batch_size=128, max_steps=3,
                         warmup_steps=1, validation_steps=0, hellaswag_samples=0, compile=False, dtype="float32",
                         checkpoint_dir=str(tmp_path_factory.mktemp("checkpoints")))
    return train(config).checkpoint


@pytest.fixture(scope="module")
def exported_dir(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    export_dir = tmp_path_factory.mktemp("exports") / "export"
    result = run_cli("export", "--checkpoint", str(trained_checkpoint), "--export-dir", str(export_dir), "--device=cpu")
    assert result.returncode == 0, result.stderr
    assert str(export_dir) in result.stdout
    return export_dir


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_export_writes_a_complete_gpt2_folder_in_openai_layout(exported_dir: Path) -> None:
    assert {p.name for p in exported_dir.iterdir()} >= EXPORTED_FILES
    assert _leftovers(exported_dir.parent) == []
    config = json.loads((exported_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_ctx"], config["n_positions"], config["vocab_size"]) == (1024, 1024, VOCAB_SIZE)
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (4, 4, 64)
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["bos_token_id"] == config["eos_token_id"] == 50256
    assert json.loads((exported_dir / "generation_config.json").read_text())["eos_token_id"] == 50256
    weights = load_file(exported_dir / "model.safetensors")
    assert "lm_head.weight" not in weights and not any(k.startswith("transformer.") for k in weights)
    assert weights["wte.weight"].shape == (VOCAB_SIZE, 64)  # padding rows 50257..50303 cut
    assert weights["h.0.attn.c_attn.weight"].shape == (64, 192)  # Conv1D: (in, out)
    assert weights["h.1.mlp.c_proj.weight"].shape == (256, 64)


def test_transformers_gives_the_checkpoint_logits(exported_dir: Path, trained_checkpoint: Path) -> None:
    idx = torch.randint(0, VOCAB_SIZE, (2, 50), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(exported_dir).eval()
    ours = load_model(trained_checkpoint)
    with torch.no_grad():
        expected = ours(idx)[0][..., :VOCAB_SIZE]  # (B, T, 50257): the real tokens' columns
        got = hf(idx).logits
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5


def test_sampling_the_export_gives_the_checkpoint_text(exported_dir: Path, trained_checkpoint: Path) -> None:
    args = ("sample", "--seed=1234", "--max-length=40", "--num-sequences=3", "--device=cpu", "To be, or not to be")
    from_checkpoint = run_cli(*args, "--checkpoint", str(trained_checkpoint))
    from_export = run_cli(*args, f"--pretrained={exported_dir}")
    assert from_checkpoint.returncode == 0, from_checkpoint.stderr
    assert from_export.returncode == 0, from_export.stderr
    assert from_checkpoint.stdout.count("> To be, or not to be") == 3
    assert from_export.stdout == from_checkpoint.stdout


def test_a_padded_model_never_samples_padding_ids() -> None:
    """Why the export samples like its checkpoint: generation ignores the 47 padding columns."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=1, n_embd=8)).eval()
    with torch.no_grad():  # final hidden state all ones, padding rows too: they would win every step
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[VOCAB_SIZE:] = 1.0
    prompt = torch.zeros(2, 4, dtype=torch.long)
    for greedy in (True, False):
        rows = generate(model, prompt, 10, greedy=greedy, eos_token=None, generator=torch.Generator().manual_seed(0))
        assert max(max(row) for row in rows) < VOCAB_SIZE


def test_auto_tokenizer_encodes_like_ours(exported_dir: Path, nano_cache: Path) -> None:
    texts = [
        (nano_cache / "tinyshakespeare" / "input.txt").read_text()[:5000],
        "Hello, I'm a language model,<|endoftext|> héllo 日本語 🤖\n\n   spaces\ttabs  ",
    ]
    hf = AutoTokenizer.from_pretrained(exported_dir)
    assert hf.model_max_length == 1024 and hf.eos_token_id == 50256
    for text in texts:
        ids = hf.encode(text)
        assert ids == get_tokenizer().encode(text, allowed_special="all")
        assert hf.decode(ids) == text


def test_export_of_a_transformers_folder_round_trips_to_identical_tensors(
    tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path
) -> None:
    result = run_cli("export", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--export-dir", str(tmp_path / "re"))
    assert result.returncode == 0, result.stderr
    original = GPT2LMHeadModel.from_pretrained(tiny_hf_gpt2_vocab_dir).state_dict()
    original = {k.removeprefix("transformer."): v for k, v in original.items() if k != "lm_head.weight"}
    exported = load_file(tmp_path / "re" / "model.safetensors")
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    config = json.loads((tmp_path / "re" / "config.json").read_text())
    source = json.loads((tiny_hf_gpt2_vocab_dir / "config.json").read_text())
    for key in ("n_positions", "n_embd", "n_layer", "n_head", "vocab_size", "layer_norm_epsilon", "activation_function"):
        assert config[key] == source[key], key


def test_a_folder_of_other_files_is_refused_without_inviting_force(trained_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "keep.txt").write_text("mine")
    for force in ([], ["--force"]):
        result = run_cli("export", "--checkpoint", str(trained_checkpoint), "--export-dir", str(tmp_path / "export"),
                         *force)
        assert_one_line_error(result, "not empty", "keep.txt", "choose another --export-dir")
        assert "pass --force" not in result.stderr
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["keep.txt"]


def test_the_weights_file_names_its_format_and_producer(exported_dir: Path) -> None:
    with safe_open(exported_dir / "model.safetensors", "pt") as f:
        metadata = f.metadata()
    assert metadata == {"format": "pt", "producer": "nano-gpt", "producer_version": version("nano-gpt")}


def _fail(*args: object) -> None:
    raise OSError(28, "No space left on device")


def test_a_failed_export_keeps_the_old_folder_and_leaves_no_temp_files(
    trained_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(trained_checkpoint)
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "README.md").write_text("old")  # a previous export, which --force may replace
    with monkeypatch.context() as m:
        m.setattr(nano_gpt.export, "_write_tokenizer", _fail)  # fails after model.safetensors is written
        with pytest.raises(NanoGPTError, match="No space left"):
            export_model(model, export_dir, force=True)
        with pytest.raises(NanoGPTError, match="No space left"):
            export_model(model, tmp_path / "new")
    assert [p.name for p in export_dir.iterdir()] == ["README.md"] and (export_dir / "README.md").read_text() == "old"
    assert not (tmp_path / "new").exists()
    assert _leftovers(tmp_path) == []
    export_model(model, export_dir, force=True)
    assert {p.name for p in export_dir.iterdir()} >= EXPORTED_FILES and (export_dir / "README.md").read_text() != "old"
    assert _leftovers(tmp_path) == []


def test_a_vocabulary_smaller_than_gpt2s_is_refused(tiny_hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NanoGPTError, match="smaller than its tokenizer's 50257"):
        export_model(load_pretrained(str(tiny_hf_dir)), tmp_path / "export")  # vocab 1000
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint", "unwritable folder", "no source"])
def test_bad_input_is_a_one_line_error(case: str, trained_checkpoint: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "checkpoint_000001.bin"
    corrupt.write_bytes(b"not a checkpoint")
    (tmp_path / "a-file").write_text("")
    args, fragment = {
        "missing checkpoint": (["--checkpoint", str(tmp_path / "nope.bin")], "not found"),
        "corrupt checkpoint": (["--checkpoint", str(corrupt)], "corrupt"),
        "unwritable folder": (["--checkpoint", str(trained_checkpoint), "--export-dir", str(tmp_path / "a-file" / "export")],
                              "cannot write"),
        "no source": ([], "--checkpoint"),
    }[case]
    result = run_cli("export", *args, cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "export").exists()
