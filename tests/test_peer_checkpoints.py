"""Checkpoints of the seed (allenporter/nano-gpt), karpathy/nanoGPT and karpathy/build-nanogpt, written here
in each project's exact format, load as the model they hold; and the seed's command-line habits still work."""

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from conftest import assert_one_line_error, run_cli, run_cli_here, write_hellaswag_file
from nano_gpt import GPT, GPTConfig, generate, get_tokenizer, load_pretrained
from nano_gpt.checkpoint import load_model, read_checkpoint
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval import evaluate_hellaswag, load_hellaswag
from nano_gpt.export import export_model
from nano_gpt.tokenizer import VOCAB_SIZE

# The seed's and build-nanogpt's training vocabulary (50257 padded to a multiple of 64); odd small sizes elsewhere.
CONFIG = GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)
SIZES = {"block_size": 64, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 32}
PROMPT = "Hello, I'm a language model,"


def tiny_model(seed: int = 0, biases: bool = True) -> GPT:
    """A random GPT whose biases and LayerNorm weights are not the init's zeros and ones, so losing them shows."""
    torch.manual_seed(seed)
    model = GPT(CONFIG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.1 if biases else torch.zeros_like(p))
            elif ".ln_" in name:
                p.copy_(1 + torch.randn_like(p) * 0.1)
    return model


def _mask_buffers(n_layer: int, block_size: int) -> dict[str, torch.Tensor]:
    """The causal-mask buffer older attention code registered as `attn.bias` (1, 1, T, T)."""
    mask = torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size)
    return {f"transformer.h.{i}.attn.bias": mask for i in range(n_layer)}


def save_seed_checkpoint(path: Path, model: GPT, compiled: bool = True, later_version: bool = True) -> Path:
    """allenporter/nano-gpt's `save_checkpoint`: `dataclasses.asdict` of its Checkpoint, via torch.save."""
    sd = {**model.state_dict(), **_mask_buffers(CONFIG.n_layer, CONFIG.block_size)}  # its attention keeps the mask
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    state = {
        "model_state_dict": sd,
        "config": dict(SIZES),
        "step": 19072,
        "val_loss_accum": torch.tensor(3.0712),
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.95), "params": [0, 1]}]},
        "train_config": {"seed": 1337, "step": 0, "total_batch_size": 524288, "micro_batch_size": 16,
                         "sequence_length": 1024, "max_lr": 6e-4, "min_lr_ratio": 0.1, "warmup_steps": 715,
                         "max_steps": 19073, "eval_steps": 250, "checkpoint_steps": 5000,
                         "checkpoint_dir": "checkpoints", "log_file": None},
        "dataset_config": {"dataset_dir": "dataset_cache", "dataset_name": "finewebedu", "micro_batch_size": 16,
                           "sequence_length": 1024},
        "eval_config": {"validation_steps": 20, "hellaswag_samples": None},
    }
    if later_version:
        state["sample_config"] = {"num_return_sequences": 5, "max_length": 30, "text": PROMPT, "seed": 42}
        state["name"] = path.stem
    torch.save(state, path)
    return path


def save_nanogpt_ckpt(path: Path, model: GPT, bias: bool = True) -> Path:
    """karpathy/nanoGPT's train.py checkpoint of a model trained under torch.compile."""
    sd = {**model.state_dict(), **_mask_buffers(CONFIG.n_layer, CONFIG.block_size)}  # the non-flash attention's mask
    if not bias:
        sd = {k: v for k, v in sd.items() if not k.endswith(".bias") or k.endswith(".attn.bias")}
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=bias, vocab_size=50304, dropout=0.0)
    torch.save({
        "model": {"_orig_mod." + k: v for k, v in sd.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "weight_decay": 0.1, "params": [0]}]},
        "model_args": model_args,
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.4697),
        "config": {"out_dir": "out-shakespeare", "eval_interval": 250, "dataset": "shakespeare", "batch_size": 64,
                   "block_size": 64, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.2, "bias": bias,
                   "learning_rate": 1e-3, "max_iters": 5000, "compile": True, "dtype": "bfloat16"},
    }, path)
    return path


@contextmanager
def _main_gpt_config() -> Iterator[type]:
    """build-nanogpt's `GPTConfig`: a dataclass defined in the training script, so pickled as `__main__.GPTConfig`."""

    @dataclasses.dataclass
    class GPTConfig:
        block_size: int = 1024
        vocab_size: int = 50257
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768

    GPTConfig.__module__, GPTConfig.__qualname__ = "__main__", "GPTConfig"
    main = sys.modules["__main__"]
    had, old = hasattr(main, "GPTConfig"), getattr(main, "GPTConfig", None)
    main.GPTConfig = GPTConfig  # pickle checks that __main__.GPTConfig is this very class
    try:
        yield GPTConfig
    finally:
        if had:
            main.GPTConfig = old
        else:
            del main.GPTConfig


def save_build_nanogpt_checkpoint(path: Path, model: GPT, compiled: bool = False) -> Path:
    """karpathy/build-nanogpt's train_gpt2.py checkpoint: `raw_model.state_dict()` and its config object."""
    sd = model.state_dict()
    if compiled:
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    with _main_gpt_config() as config_class:
        torch.save({"model": sd, "config": config_class(**SIZES), "step": 5000, "val_loss": 3.0523}, path)
    return path


def _logits(model: GPT, seed: int = 0) -> torch.Tensor:
    idx = torch.randint(0, VOCAB_SIZE, (2, 20), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(idx)[0]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("later_version", [True, False])
def test_seed_checkpoint_loads_the_model_it_holds(tmp_path: Path, compiled: bool, later_version: bool) -> None:
    model = tiny_model()
    path = save_seed_checkpoint(tmp_path / "checkpoint_019072.bin", model, compiled, later_version)
    loaded = load_model(path)
    assert loaded.config == CONFIG and not loaded.training
    assert torch.equal(_logits(loaded), _logits(model))


def test_nanogpt_ckpt_loads_the_model_it_holds(tmp_path: Path) -> None:
    model = tiny_model()
    loaded = load_model(save_nanogpt_ckpt(tmp_path / "ckpt.pt", model))
    assert torch.equal(_logits(loaded), _logits(model))


def test_nanogpt_ckpt_without_biases_is_gpt2_with_zero_biases(tmp_path: Path) -> None:
    model = tiny_model(biases=False)
    loaded = load_model(save_nanogpt_ckpt(tmp_path / "ckpt.pt", model, bias=False))
    biases = {k: v for k, v in loaded.state_dict().items() if k.endswith(".bias")}
    assert len(biases) == 2 * 6 + 1 and all(not v.any() for v in biases.values())  # per layer 2 LN + 4 Linear, ln_f
    assert torch.equal(_logits(loaded), _logits(model))


def test_nanogpt_ckpt_without_biases_exports_to_the_hugging_face_layout(tmp_path: Path) -> None:
    model = tiny_model(biases=False)
    loaded = load_model(save_nanogpt_ckpt(tmp_path / "ckpt.pt", model, bias=False))
    folder = export_model(loaded, tmp_path / "export")
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, VOCAB_SIZE, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = hf(idx).logits
    assert (got - _logits(model)[..., :VOCAB_SIZE]).abs().max().item() < 1e-5


@pytest.mark.parametrize("compiled", [False, True])
def test_build_nanogpt_checkpoint_loads_the_model_it_holds(tmp_path: Path, compiled: bool) -> None:
    model = tiny_model()
    path = save_build_nanogpt_checkpoint(tmp_path / "model_05000.pt", model, compiled)
    assert not hasattr(sys.modules["__main__"], "GPTConfig")  # the class is gone: loading must not need it
    loaded = load_model(path)
    assert loaded.config == CONFIG
    assert torch.equal(_logits(loaded), _logits(model))


def test_load_pretrained_takes_a_peer_checkpoint_file_for_fine_tuning(tmp_path: Path) -> None:
    model = tiny_model()
    loaded = load_pretrained(str(save_nanogpt_ckpt(tmp_path / "ckpt.pt", model)))
    assert torch.equal(_logits(loaded), _logits(model))


def test_resuming_from_a_peer_checkpoint_says_to_fine_tune_from_it(tmp_path: Path) -> None:
    path = save_seed_checkpoint(tmp_path / "checkpoint_019072.bin", tiny_model())
    with pytest.raises(NanoGPTError, match=r"allenporter/nano-gpt checkpoint.*train --pretrained="):
        read_checkpoint(path, train_state=True)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)  # what a malicious pickle would do, harmlessly


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": tiny_model().state_dict(), "model_args": {**SIZES}, "hook": _RunsCode(marker)}, path)
    with pytest.raises(NanoGPTError, match="refuses to load"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("state", "fragments"),
    [
        ({"weights": {}}, ["not a checkpoint nano-gpt understands", "ckpt.pt", "model_NNNNN.pt"]),
        ("plain", ["not a checkpoint nano-gpt understands"]),  # a bare state dict: no config to build from
        ({"model": {}, "model_args": {**SIZES, "n_head": 0}}, ["nanoGPT checkpoint", "n_head=0 is out of range"]),
        ({"model": {}, "model_args": {**SIZES, "n_head": 3}}, ["n_head=3 does not divide n_embd=32"]),
        ({"model": {}, "model_args": {**SIZES, "block_size": -1}}, ["block_size=-1 is out of range"]),
        ({"model": {}, "model_args": {**SIZES, "n_layer": 10**9}}, ["n_layer=1000000000 is out of range"]),
        ({"model": {}, "model_args": {**SIZES, "vocab_size": "50304"}}, ["vocab_size is '50304', not an integer"]),
        ({"model_state_dict": "SD", "config": {**SIZES, "block_size": 128}}, ["wpe.weight has shape (64, 32)",
                                                                             "n_positions (block_size) is 128"]),
        ({"model_state_dict": "SD", "config": {**SIZES, "n_layer": 3}}, ["2 layers", "n_layer=3"]),
        ({"model_state_dict": [1, 2], "config": SIZES}, ["not a state dict"]),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_file_and_field(tmp_path: Path, state: object,
                                                                 fragments: list[str]) -> None:
    sd = tiny_model().state_dict()
    if state == "plain":
        state = sd
    elif isinstance(state, dict):
        state = {k: sd if v == "SD" else v for k, v in state.items()}
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(NanoGPTError) as e:
        load_model(path)
    assert all(f in str(e.value) for f in [str(path), *fragments]), str(e.value)


def test_garbage_checkpoint_is_one_line_listing_the_formats(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_000100.bin"
    path.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cli("sample", f"--checkpoint={path}", "--device=cpu"), str(path), "corrupt",
                          "karpathy/nanoGPT's ckpt.pt")


def test_seed_readme_export_command_works_on_a_seed_checkpoint(tmp_path: Path) -> None:
    model = tiny_model()
    save_seed_checkpoint(tmp_path / "checkpoint_019072.bin", model)
    result = run_cli("export", "--checkpoint", "./checkpoint_019072.bin", "--export-dir", "export", "--device=cpu",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, VOCAB_SIZE, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (hf(idx).logits - _logits(model)[..., :VOCAB_SIZE]).abs().max().item() < 1e-5


def test_sample_from_a_nanogpt_ckpt_gives_the_models_text(tmp_path: Path) -> None:
    model = tiny_model(biases=False)
    path = save_nanogpt_ckpt(tmp_path / "ckpt.pt", model, bias=False)
    result = run_cli("sample", f"--checkpoint={path}", "--greedy", "--max-length=16", "--num-sequences=2",
                     "--device=cpu", "--dtype=fp32", PROMPT)
    assert result.returncode == 0, result.stderr
    enc = get_tokenizer()
    prompt = enc.encode_ordinary(PROMPT)
    [tokens, _] = generate(model, torch.tensor([prompt] * 2), 16 - len(prompt), greedy=True)
    assert result.stdout.splitlines() == ["> " + enc.decode(tokens)] * 2


def test_eval_of_a_build_nanogpt_checkpoint_scores_the_model_it_holds(tmp_path: Path) -> None:
    model = tiny_model()
    path = save_build_nanogpt_checkpoint(tmp_path / "model_05000.pt", model)
    hellaswag = write_hellaswag_file(tmp_path / "hellaswag.jsonl", n=3)
    result = run_cli("eval", f"--checkpoint={path}", f"--hellaswag-file={hellaswag}", "--validation-steps=0",
                     "--device=cpu", "--dtype=fp32", "--json")
    assert result.returncode == 0, result.stderr
    expected = evaluate_hellaswag(model, load_hellaswag(hellaswag), "cpu")
    summary = json.loads(result.stdout)
    assert (summary["examples"], summary["correct"], summary["correct_norm"]) == (3, expected.correct,
                                                                                  expected.correct_norm)


def test_train_fine_tunes_from_a_nanogpt_ckpt(tmp_path: Path) -> None:
    from nano_gpt.data import prepare_dataset

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The king shall ride at dawn. A horse, my lord! " * 300)
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=1000, num_workers=1)
    ckpt = save_nanogpt_ckpt(tmp_path / "ckpt.pt", tiny_model(), bias=False)
    result = run_cli("train", f"--pretrained={ckpt}", f"--dataset={corpus}", f"--dataset-dir={tmp_path / 'ds'}",
                     "--device=cpu", "--dtype=fp32", "--no-compile", "--sequence-length=32", "--micro-batch-size=2",
                     "--total-batch-size=64", "--max-steps=1", "--warmup-steps=0", "--validation-steps=0",
                     "--hellaswag-samples=0", f"--checkpoint-dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    [checkpoint] = (tmp_path / "run").glob("checkpoint_*.bin")
    saved = torch.load(checkpoint, weights_only=True)["model_config"]
    assert {k: saved[k] for k in SIZES} == SIZES  # the file's shape, which no preset has


# The seed's habits: its flag spellings (hidden) and an unquoted several-word prompt.

def _hidden_options(command: str) -> dict[str, bool]:
    import typer

    from nano_gpt.cli import app

    params = typer.main.get_command(app).commands[command].params
    return {opt: p.hidden for p in params for opt in p.opts}


def test_the_seeds_sample_flags_and_unquoted_words_give_the_same_text(tiny_hf_gpt2_vocab_dir: Path) -> None:
    common = (f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--device=cpu", "--dtype=fp32")
    seed_style = run_cli_here("sample", "--sample-num-sequences=2", "--sample-max-length=14", "--sample-seed=3", *common,
                         "Hello", "world")
    ours = run_cli_here("sample", "--num-sequences=2", "--max-length=14", "--seed=3", *common, "Hello world")
    assert seed_style.returncode == 0, seed_style.stderr
    lines = ours.stdout.splitlines()
    assert seed_style.stdout == ours.stdout and len(lines) == 2 and all(line.startswith("> Hello world") for line in lines)
    hidden = _hidden_options("sample")
    assert hidden["--sample-num-sequences"] and hidden["--sample-max-length"] and hidden["--sample-seed"]
    assert not hidden["--num-sequences"]


def test_the_seeds_eval_micro_batch_size_is_a_hidden_alias(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    hellaswag = write_hellaswag_file(tmp_path / "hellaswag.jsonl", n=2)
    args = ("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--hellaswag-file={hellaswag}", "--validation-steps=0",
            "--device=cpu", "--dtype=fp32", "--json")
    result = run_cli_here(*args, "--micro-batch-size=1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(run_cli_here(*args, "--batch-size=1").stdout)
    assert _hidden_options("eval")["--micro-batch-size"] and not _hidden_options("eval")["--batch-size"]
