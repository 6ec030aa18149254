"""`nano-gpt sample` end to end, in real processes."""

from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli, run_cli_here
from nano_gpt import generate, get_tokenizer, load_pretrained

PROMPT = "Hello, I'm a language model,"


def test_help_lists_subcommands_and_debug() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "sample" in result.stdout and "--debug" in result.stdout


def test_sample_prints_one_line_per_sequence_and_is_reproducible(tiny_hf_gpt2_vocab_dir: Path) -> None:
    args = ("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--seed=42", "--max-length=20", "--num-sequences=3",
            "--device=cpu", PROMPT)
    first, second = run_cli(*args), run_cli_here(*args)  # in another process, and in this one
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len([line for line in lines if line.startswith("> " + PROMPT)]) == 3
    assert first.stdout == second.stdout
    assert run_cli_here(*args[:2], "--seed=7", *args[3:]).stdout != first.stdout


def test_single_sequence_streams_the_same_text_as_the_library(tiny_hf_gpt2_vocab_dir: Path) -> None:
    result = run_cli("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--seed=1", "--max-length=16",
                     "--num-sequences=1", "--device=cpu", "--dtype=fp32", PROMPT)
    assert result.returncode == 0, result.stderr
    enc = get_tokenizer()
    model = load_pretrained(str(tiny_hf_gpt2_vocab_dir))
    [tokens] = generate(model, torch.tensor([enc.encode_ordinary(PROMPT)]), 8,
                        generator=torch.Generator().manual_seed(1))
    assert result.stdout == "> " + enc.decode(tokens) + "\n"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--pretrained=./no-such-folder"], ["not found"]),
        (["--pretrained=gpt2"], ["local folder"]),
        (["--checkpoint=missing.bin"], ["missing.bin", "not found"]),
        (["--device=cuda"], ["CUDA is not available", "--device=cpu"]),
        (["--max-length=5"], ["--max-length=5", "larger than the prompt"]),
        (["--max-length=10000000000"], ["10000000000 tokens", "lower --num-sequences or --max-length"]),
        (["--pretrained=PLACEHOLDER", "--checkpoint=x.bin"], ["not both"]),
    ],
)
def test_bad_input_is_a_one_line_error(tiny_hf_gpt2_vocab_dir: Path, args: list[str], fragments: list[str]) -> None:
    if not any(a.startswith(("--pretrained", "--checkpoint")) for a in args):
        args = [f"--pretrained={tiny_hf_gpt2_vocab_dir}", *args]
    args = [a.replace("PLACEHOLDER", str(tiny_hf_gpt2_vocab_dir)) for a in args]
    assert_one_line_error(run_cli("sample", *args, PROMPT), *fragments)


def test_a_prompt_longer_than_the_context_is_continued_from_its_last_context_tokens(tiny_hf_gpt2_vocab_dir: Path) -> None:
    result = run_cli("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--num-sequences=1", "--max-length=210",
                     "--greedy", "word " * 200)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("> " + "word " * 199 + "word")  # the whole prompt, then its continuation


def test_debug_shows_the_traceback(tiny_hf_gpt2_vocab_dir: Path) -> None:
    result = run_cli("--debug", "sample", "--pretrained=./no-such-folder", PROMPT)
    assert result.returncode != 0 and "NanoGPTError" in result.stderr
