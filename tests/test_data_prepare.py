"""prepare_dataset: exact tokens from every kind of source, identical shards however they are made."""

import hashlib
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import assert_one_line_error, files_under, run_cli
from data_corpus import documents, write_jsonl
from nano_gpt.data import prepare, prepare_dataset
from nano_gpt.data.prepare import PreparedSplit
from nano_gpt.errors import NanoGPTError
from nano_gpt.tokenizer import EOT_TOKEN, get_tokenizer


def stream_of(texts: list[str]) -> list[int]:
    """What prepare_dataset must write: each document as <|endoftext|> then its ordinary tokens."""
    enc = get_tokenizer()
    return [token for text in texts for token in [EOT_TOKEN, *enc.encode_ordinary(text)]]


def read_split(split: PreparedSplit) -> np.ndarray:
    """A split's tokens, after checking each shard against its manifest entry."""
    parts = []
    for shard in split.manifest["shards"]:
        data = (split.directory / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        parts.append(np.frombuffer(data, dtype="<u2"))
        assert len(parts[-1]) == shard["tokens"]
    tokens = np.concatenate(parts)
    assert len(tokens) == split.manifest["tokens"]
    return tokens


def test_tinyshakespeare_prepares_to_301967_and_36060_tokens_one_document_each(nano_cache: Path, tmp_path: Path) -> None:
    result = prepare_dataset("tinyshakespeare", dataset_dir=tmp_path, num_workers=2)
    train, validation = read_split(result["train"]), read_split(result["validation"])
    # One <|endoftext|> per split, so 301,966 + 36,059 = 338,025 text tokens, the corpus encoded whole.
    assert (len(train), len(validation)) == (301_967, 36_060)
    assert (train == EOT_TOKEN).sum() == 1 and (validation == EOT_TOKEN).sum() == 1
    text = (nano_cache / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    assert (len(text), cut) == (1_115_394, 1_003_854)
    assert len(get_tokenizer().encode_ordinary(text)) == 338_025
    assert train.tolist() == stream_of([text[:cut]]) and validation.tolist() == stream_of([text[cut:]])
    assert result["train"].directory == tmp_path / "tinyshakespeare" / "train"
    assert result["train"].manifest["tokenizer"]["kind"] == "gpt2" and result["train"].manifest["split"] == "train"


def test_long_documents_cut_into_pieces_tokenize_exactly_as_whole(nano_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "PIECE_CHARS", 100)
    shakespeare = (nano_cache / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
    text = shakespeare + " naïve café ñandú Привет мир 東京 don't it's  x  y 3 4\t\tz " * 300
    pieces = list(prepare._pieces(text))
    assert len(pieces) > 500 and "".join(pieces) == text
    enc = get_tokenizer()
    assert [t for piece in pieces for t in enc.encode_ordinary(piece)] == enc.encode_ordinary(text)


def test_special_token_text_inside_a_document_stays_ordinary_text(tmp_path: Path) -> None:
    texts = ["before <|endoftext|> after", "", "second"]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    result = prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "ds", validation_tokens=0, num_workers=1)
    tokens = read_split(result["train"])
    assert tokens.tolist() == stream_of(texts) and (tokens == EOT_TOKEN).sum() == 3


def test_shards_are_identical_with_one_worker_or_a_spawned_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare, "BATCH_CHARS", 4000)  # many batches in flight
    texts = documents(1500)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", texts)
    options = dict(tokens_per_shard=5000, validation_tokens=7000)
    alone = prepare_dataset(str(corpus), dataset_dir=tmp_path / "one", num_workers=1, **options)
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "spawn", num_workers=2, start_method="spawn", **options)
    assert files_under(tmp_path / "one") == files_under(tmp_path / "spawn")
    validation, train = read_split(alone["validation"]), read_split(alone["train"])
    assert len(validation) == 7000 and [s["tokens"] for s in alone["validation"].manifest["shards"]] == [5000, 2000]
    assert np.concatenate([validation, train]).tolist() == stream_of(texts)
    assert all(s["tokens"] == 5000 for s in alone["train"].manifest["shards"][:-1])


def test_txt_glob_folder_jsonl_and_parquet_sources_give_the_same_documents(tmp_path: Path) -> None:
    texts = documents(30, seed=1)
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    jsonl = write_jsonl(tmp_path / "corpus.jsonl", texts, column="body")
    parquet = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"body": texts, "n": list(range(len(texts)))}), parquet, row_group_size=7)
    for dataset, column in [(f"{folder}/*.txt", "text"), (str(folder), "text"), (str(jsonl), "body"),
                            (str(parquet), "body")]:
        result = prepare_dataset(dataset, ["train"], dataset_dir=tmp_path / "ds", validation_tokens=0,
                                 text_column=column, num_workers=1)
        assert read_split(result["train"]).tolist() == stream_of(texts), dataset


def test_hf_source_streams_a_local_datasets_folder_with_its_own_validation_split(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    train_texts, validation_texts = documents(50, seed=2), documents(10, seed=3)
    folder = tmp_path / "my_dataset"
    datasets.Dataset.from_dict({"content": train_texts}).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_dict({"content": validation_texts}).to_parquet(str(folder / "validation.parquet"))
    streamed = []
    real_load = datasets.load_dataset

    def load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        streamed.append(kwargs.get("streaming"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load)
    result = prepare_dataset(f"hf:{folder}", dataset_dir=tmp_path / "ds", text_column="content", num_workers=2)
    assert read_split(result["train"]).tolist() == stream_of(train_texts)
    assert read_split(result["validation"]).tolist() == stream_of(validation_texts)
    assert streamed == [True, True]


def test_finewebedu_streams_its_10bt_sample_and_gives_the_first_shard_to_validation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    texts = documents(80, seed=4)
    folder = tmp_path / "fineweb"
    datasets.Dataset.from_dict({"text": texts, "score": [3.0] * len(texts)}).to_parquet(str(folder / "train.parquet"))
    opened = []
    real_load, real_split_names = datasets.load_dataset, datasets.get_dataset_split_names

    def load(path: str, name: str | None = None, **kwargs):  # noqa: ANN003, ANN202
        opened.append((path, name, kwargs["streaming"]))
        return real_load(str(folder), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda path, name=None: real_split_names(str(folder)))
    result = prepare_dataset("finewebedu", dataset_dir=tmp_path / "ds", tokens_per_shard=300, num_workers=1)
    assert set(opened) == {("HuggingFaceFW/fineweb-edu", "sample-10BT", True)}
    validation, train = read_split(result["validation"]), read_split(result["train"])
    assert [s["tokens"] for s in result["validation"].manifest["shards"]] == [300]
    assert np.concatenate([validation, train]).tolist() == stream_of(texts)
    assert result["train"].directory == tmp_path / "ds" / "finewebedu" / "train"


def test_a_finished_split_is_kept_unless_force(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(50))
    options = dict(dataset_dir=tmp_path / "ds", validation_tokens=100, num_workers=1)
    first = prepare_dataset(str(corpus), **options)
    shard = first["train"].directory / "shard_000000.bin"
    written = shard.stat().st_mtime_ns
    again = prepare_dataset(str(corpus), **options)
    assert all(split.reused for split in again.values()) and shard.stat().st_mtime_ns == written
    with pytest.raises(NanoGPTError, match="--tokens-per-shard=100000000.*--force"):
        prepare_dataset(str(corpus), tokens_per_shard=500, **options)
    forced = prepare_dataset(str(corpus), tokens_per_shard=500, force=True, **options)
    assert not forced["train"].reused and len(forced["train"].manifest["shards"]) > 1
    shards = {s["file"] for s in forced["train"].manifest["shards"]}
    assert {p.name for p in forced["train"].directory.iterdir()} == shards | {"manifest.json"}
    assert {p.name for p in forced["train"].directory.parent.iterdir()} == {"train", "validation", ".train.lock",
                                                                             ".validation.lock"}


def test_memory_stays_flat_as_the_corpus_grows(tmp_path: Path) -> None:
    def peak_bytes(count: int) -> int:
        corpus = write_jsonl(tmp_path / f"corpus{count}.jsonl", documents(count, words=300))
        get_tokenizer()  # built once per process: not part of what is measured
        tracemalloc.start()
        try:
            prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "ds", validation_tokens=0, num_workers=1)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(1000), peak_bytes(4000)
    assert large < 1.5 * small, (small, large)


def test_validation_tokens_beyond_the_corpus_say_to_lower_them(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents(3))
    with pytest.raises(NanoGPTError, match="the corpus has [0-9]+, all of them in the first 100,000.*lower --validation-tokens"):
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=100_000, num_workers=1)


def test_a_local_corpus_smaller_than_a_shard_gives_a_tenth_of_its_tokens_to_validation(tmp_path: Path) -> None:
    texts = documents(40, seed=6)
    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", texts))
    stream = stream_of(texts)
    result = prepare_dataset(corpus, dataset_dir=tmp_path / "ds", num_workers=2)
    validation, train = read_split(result["validation"]), read_split(result["train"])
    assert len(validation) == len(stream) // 10 and len(stream) < 100_000_000
    assert np.concatenate([validation, train]).tolist() == stream
    assert result["train"].manifest["options"]["validation_tokens"] is None  # follows from the corpus
    again = prepare_dataset(corpus, dataset_dir=tmp_path / "ds", num_workers=1)
    assert all(split.reused for split in again.values())
    capped = prepare_dataset(corpus, dataset_dir=tmp_path / "capped", tokens_per_shard=50, num_workers=1)
    assert read_split(capped["validation"]).tolist() == stream[:50]  # 10% is more than a shard: one shard


@pytest.mark.parametrize(("name", "content"), [("corpus.txt", ""), ("corpus.jsonl", ""), ("corpus.jsonl", "\n\n"),
                                             ("corpus.jsonl", '{"text": ""}\n')],
                         ids=["empty-txt", "empty-jsonl", "blank-lines", "empty-text"])
def test_an_empty_corpus_says_so(tmp_path: Path, name: str, content: str) -> None:
    corpus = tmp_path / name
    corpus.write_text(content)
    with pytest.raises(NanoGPTError, match="the corpus is empty"):
        prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", num_workers=1)
    with pytest.raises(NanoGPTError, match="the corpus is empty"):
        prepare_dataset(str(corpus), ["train"], dataset_dir=tmp_path / "ds", validation_tokens=0, num_workers=1)
    assert not (tmp_path / "ds").exists() or not list((tmp_path / "ds").rglob("manifest.json"))


def test_cli_prepares_tinyshakespeare_with_a_progress_bar_on_a_terminal(nano_cache: Path, tmp_path: Path) -> None:
    result = run_cli("prepare_dataset", "--dataset=tinyshakespeare", "--num-workers=2", cwd=tmp_path,
                     env={"TTY_COMPATIBLE": "1", "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "train: 301,967 tokens in 1 shard at dataset_cache/tinyshakespeare/train" in result.stdout
    assert "validation: 36,060 tokens in 1 shard" in result.stdout
    assert "tokens/s" in result.stderr and "301,967 tokens" in result.stderr
    assert (tmp_path / "dataset_cache" / "tinyshakespeare" / "validation" / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--dataset=tinyshakespeare"], ["https://raw.githubusercontent.com/karpathy/char-rnn/", "tinyshakespeare/input.txt"]),
        (["--dataset=./no-such-corpus/*.txt"], ["matches no files", "tinyshakespeare", "hf:"]),
        (["--dataset=hf:nobody/no-such-dataset"], ["nobody/no-such-dataset"]),
    ],
)
def test_bad_datasets_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                          fragments: list[str]) -> None:
    monkeypatch.setenv("NANO_GPT_CACHE", str(tmp_path / "empty-cache"))
    assert_one_line_error(run_cli("prepare_dataset", *args, cwd=tmp_path), *fragments)


def test_an_unknown_split_is_an_error_naming_the_splits(nano_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(NanoGPTError, match="no split 'test'; its splits are train, validation"):
        prepare_dataset("tinyshakespeare", ["test"], dataset_dir=tmp_path)


def test_a_truncated_shard_is_reported_with_the_command_that_repairs_it(tmp_path: Path) -> None:
    from nano_gpt.data import ShardLoader

    corpus = str(write_jsonl(tmp_path / "corpus.jsonl", documents(50)))
    result = prepare_dataset(corpus, dataset_dir=tmp_path / "ds", validation_tokens=100, num_workers=1)
    shard = result["train"].directory / "shard_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(NanoGPTError, match="shard_000000.bin is truncated: .* bytes where the manifest says .*; pass --force"):
        prepare_dataset(corpus, dataset_dir=tmp_path / "ds", validation_tokens=100, num_workers=1)
    with pytest.raises(NanoGPTError, match=r"truncated.*`nano-gpt prepare_dataset .*--splits=train .*--force`"):
        ShardLoader(tmp_path / "ds", corpus, "train", 1, 8)
