"""Datasets tokenized by any tokenizer: a Hugging Face tokenizer folder made here, uint32 shards for a vocabulary
over 65,536, and the bad inputs (an empty corpus for char, a path that is not a tokenizer, a vocabulary over 2**32,
splits of two tokenizers) each refused in one line with nothing lost."""

from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli_here
from nano_gpt.data import ShardLoader, prepare_dataset
from nano_gpt.data.shards import dtype_for_vocab, split_dir
from nano_gpt.errors import NanoGPTError

TEXT = "the cat sat on the mat and the dog sat on the log " * 40


def save_word_tokenizer(folder: Path, extra_words: int = 0, eos: bool = True) -> Path:
    """A word-level tokenizer saved as transformers saves one: [UNK], <eos>, the corpus's words, then fillers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.split())) + [f"w{i:06d}" for i in range(extra_words)]
    vocab = {"[UNK]": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    rust = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=rust, unk_token="[UNK]", **({"eos_token": "<eos>"} if eos else {})
                            ).save_pretrained(folder)
    return folder


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_a_tokenizer_folder_tokenizes_the_dataset_with_its_eos_between_documents(corpus: Path, tmp_path: Path) -> None:
    folder = save_word_tokenizer(tmp_path / "tok")
    prepared = prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", tokenizer=str(folder), num_workers=1,
                               validation_tokens=50)
    manifest = prepared["train"].manifest
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["tokenizer"]["eot_token"] == 1
    assert manifest["dtype"] == "uint16" and manifest["tokens"] == 1 + len(TEXT.split()) - 50
    loader = ShardLoader(tmp_path / "ds", str(corpus), "validation", 1, 49, tokenizer=str(folder))
    x, _ = loader.next_batch()
    assert x[0, 0] == 1 and x[0, 1:4].tolist() == [2 + sorted(set(TEXT.split())).index(w) for w in ("the", "cat", "sat")]


def test_a_vocabulary_over_65536_is_written_and_read_as_uint32(corpus: Path, tmp_path: Path) -> None:
    folder = save_word_tokenizer(tmp_path / "big", extra_words=70_000)
    prepared = prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", tokenizer=str(folder), num_workers=1,
                               validation_tokens=50)
    manifest = prepared["train"].manifest
    assert manifest["dtype"] == "uint32" and manifest["tokenizer"]["n_vocab"] == 70_000 + 2 + len(set(TEXT.split()))
    shard = prepared["train"].directory / manifest["shards"][0]["file"]
    assert shard.stat().st_size == 4 * manifest["tokens"]
    loader = ShardLoader(tmp_path / "ds", str(corpus), "train", 2, 8, tokenizer=str(folder))
    x, y = loader.next_batch()
    assert x.flatten()[1:].tolist() == y.flatten()[:-1].tolist() and int(x.max()) < 20


def test_a_vocabulary_over_2_to_the_32_is_refused() -> None:
    assert dtype_for_vocab(65_536) == "uint16" and dtype_for_vocab(65_537) == "uint32"
    with pytest.raises(NanoGPTError, match="more than the 2\\*\\*32 ids a uint32 shard holds"):
        dtype_for_vocab(2**32 + 1)


def test_a_tokenizer_without_an_end_of_sequence_token_names_the_flag(corpus: Path, tmp_path: Path) -> None:
    folder = save_word_tokenizer(tmp_path / "tok", eos=False)
    result = run_cli_here("prepare_dataset", f"--dataset={corpus}", f"--tokenizer={folder}",
                          f"--dataset-dir={tmp_path / 'ds'}", "--num-workers=1")
    assert_one_line_error(result, "has no end-of-sequence token", "--eot-token=TOKEN")
    result = run_cli_here("prepare_dataset", f"--dataset={corpus}", f"--tokenizer={folder}", "--eot-token=<eos>",
                          f"--dataset-dir={tmp_path / 'ds'}", "--num-workers=1")
    assert result.returncode == 0, result.stderr


def test_an_empty_corpus_for_char_and_a_path_that_is_not_a_tokenizer_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_cli_here("prepare_dataset", f"--dataset={empty}", "--tokenizer=char", f"--dataset-dir={tmp_path / 'ds'}")
    assert_one_line_error(result, "the corpus is empty")
    (tmp_path / "notes.txt").write_text("not a tokenizer")
    for spec in (tmp_path / "notes.txt", tmp_path):
        result = run_cli_here("prepare_dataset", f"--dataset={tmp_path / 'notes.txt'}", f"--tokenizer={spec}",
                              f"--dataset-dir={tmp_path / 'ds'}")
        assert_one_line_error(result, f"--tokenizer={spec} is not a tokenizer")
    assert not (tmp_path / "ds").exists() or not list((tmp_path / "ds").rglob("manifest.json"))


def test_splits_of_two_tokenizers_are_refused_in_one_line_before_training(corpus: Path, tmp_path: Path) -> None:
    folder = save_word_tokenizer(tmp_path / "tok")
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", tokenizer=str(folder), num_workers=1, validation_tokens=50)
    train_manifest = split_dir(tmp_path / "ds", str(corpus), "train", str(folder)) / "manifest.json"
    before = train_manifest.read_bytes()
    save_word_tokenizer(folder, extra_words=3)  # the folder changes, then validation alone is prepared again
    prepare_dataset(str(corpus), ["validation"], dataset_dir=tmp_path / "ds", tokenizer=str(folder), num_workers=1,
                    validation_tokens=50, force=True)
    result = run_cli_here("train", f"--dataset={corpus}", f"--tokenizer={folder}", f"--dataset-dir={tmp_path / 'ds'}",
                          "--model=baby", f"--checkpoint-dir={tmp_path / 'run'}", "--device=cpu")
    assert_one_line_error(result, "the train split of", "but its validation split by", "--force")
    assert train_manifest.read_bytes() == before and not (tmp_path / "run").exists()
