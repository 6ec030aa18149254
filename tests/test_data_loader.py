"""ShardLoader: shapes, shifting, shard crossing, ranks, epochs, shuffling and resumable position."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from data_corpus import documents, write_jsonl
from nano_gpt.data import DEFAULT_DATASET_DIR, ShardLoader, prepare_dataset
from nano_gpt.data.shards import PROGRESS
from nano_gpt.errors import NanoGPTError
from nano_gpt.tokenizer import EOT_TOKEN

TOKENS_PER_SHARD = 1000  # many shards, and batches of 4 x 37 tokens cross their boundaries


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, np.ndarray]:
    """(dataset dir, dataset, the train split's whole token stream)."""
    folder = tmp_path_factory.mktemp("loader")
    corpus = str(write_jsonl(folder / "corpus.jsonl", documents(300, seed=5)))
    result = prepare_dataset(corpus, dataset_dir=folder / "ds", tokens_per_shard=TOKENS_PER_SHARD,
                             validation_tokens=2500, num_workers=1)
    train = result["train"]
    stream = np.concatenate([np.fromfile(train.directory / s["file"], dtype="<u2") for s in train.manifest["shards"]])
    assert len(train.manifest["shards"]) > 5
    return folder / "ds", corpus, stream.astype(np.int64)


def loader(prepared: tuple[Path, str, np.ndarray], **kwargs) -> ShardLoader:  # noqa: ANN003
    dataset_dir, dataset, _ = prepared
    return ShardLoader(dataset_dir, dataset, **{"split": "train", "micro_batch_size": 4, "sequence_length": 37, **kwargs})


def test_batches_are_int64_b_by_t_with_y_shifted_by_one_across_shard_boundaries(prepared: tuple) -> None:
    stream = prepared[2]
    train = loader(prepared)
    window = 4 * 37
    for step in range(train.steps_per_epoch):
        x, y = train.next_batch()
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 37)
        expected = stream[step * window:(step + 1) * window + 1]
        assert x.flatten().tolist() == expected[:-1].tolist() and y.flatten().tolist() == expected[1:].tolist()
    assert train.steps_per_epoch == (len(stream) - 1) // window
    assert (train.steps_per_epoch * window) // TOKENS_PER_SHARD > 5  # it crossed several shard boundaries


def test_the_epoch_wraps_around_to_the_start(prepared: tuple) -> None:
    train = loader(prepared)
    first = train.next_batch()
    for _ in range(train.steps_per_epoch - 1):
        train.next_batch()
    assert train.epoch == 0
    again = train.next_batch()
    assert train.epoch == 1 and all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_windows_that_together_are_one_process_windows(prepared: tuple, shuffle: bool) -> None:
    world_size, steps = 3, 5
    single = loader(prepared, shuffle=shuffle, seed=1)
    one_process = [single.next_batch()[0] for _ in range(world_size * steps)]
    ranks = [loader(prepared, rank=r, world_size=world_size, shuffle=shuffle, seed=1) for r in range(world_size)]
    for step in range(steps):
        for rank, rank_loader in enumerate(ranks):
            assert torch.equal(rank_loader.next_batch()[0], one_process[step * world_size + rank])


def test_shuffling_reorders_shards_and_documents_per_epoch_from_the_seed(prepared: tuple) -> None:
    stream = prepared[2]
    whole = len(stream) - 1  # one batch holds the whole epoch

    def epochs(seed: int, count: int = 2) -> list[np.ndarray]:
        epoch_loader = loader(prepared, micro_batch_size=1, sequence_length=whole, shuffle=True, seed=seed)
        return [torch.cat([x[0], y[0, -1:]]).numpy() for x, y in (epoch_loader.next_batch() for _ in range(count))]

    first, second = epochs(seed=0)
    assert not np.array_equal(first, stream) and not np.array_equal(first, second)
    assert all(np.array_equal(a, b) for a, b in zip(epochs(seed=0), [first, second]))
    assert not np.array_equal(epochs(seed=7, count=1)[0], first)
    for epoch in (first, second):  # the same tokens, whole documents kept together
        assert np.array_equal(np.sort(epoch), np.sort(stream))
        assert epoch.tobytes().find(stream[:stream.tolist().index(EOT_TOKEN, 1)].tobytes()) >= 0
    plain = loader(prepared, micro_batch_size=1, sequence_length=whole)
    assert np.array_equal(plain.next_batch()[0][0].numpy(), stream[:-1])


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_restored_position_gives_exactly_the_batches_that_would_have_followed(prepared: tuple, shuffle: bool) -> None:
    train = loader(prepared, shuffle=shuffle, seed=3)
    for _ in range(train.steps_per_epoch - 2):  # resume just before the epoch ends
        train.next_batch()
    buffer = io.BytesIO()
    torch.save({"loader": train.state_dict()}, buffer)
    expected = [train.next_batch() for _ in range(5)]
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["loader"]
    assert type(state.pop("shards")) is str and all(type(value) is int for value in state.values())  # no numpy
    resumed = loader(prepared, shuffle=shuffle, seed=3)
    resumed.load_state_dict(state)
    for x, y in expected:
        rx, ry = resumed.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_validation_loader_reset_starts_over(prepared: tuple) -> None:
    validation = loader(prepared, split="validation", micro_batch_size=2, sequence_length=16)
    first = [validation.next_batch()[0] for _ in range(3)]
    validation.reset()
    assert all(torch.equal(a, validation.next_batch()[0]) for a in first)
    assert validation.total_tokens == 2500


def test_a_missing_dataset_names_the_prepare_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NanoGPTError) as error:
        ShardLoader(tmp_path, "./my corpus/*.txt", "validation", 4, 8)
    message = str(error.value)
    assert "\n" not in message
    assert f"nano-gpt prepare_dataset --dataset='./my corpus/*.txt' --splits=validation --dataset-dir={tmp_path}" in message
    with pytest.raises(NanoGPTError, match="`nano-gpt prepare_dataset --dataset=tinyshakespeare --splits=train`"):
        monkeypatch.chdir(tmp_path)
        ShardLoader(DEFAULT_DATASET_DIR, "tinyshakespeare", "train", 4, 8)


def test_an_interrupted_preparation_says_to_run_it_again(prepared: tuple) -> None:
    dataset_dir, dataset, _ = prepared
    directory = next(dataset_dir.iterdir()) / "validation"
    (directory / PROGRESS).write_text("{}\n")
    (directory / "manifest.json").rename(directory / "manifest.moved")
    try:
        with pytest.raises(NanoGPTError, match="was not finished.*run `nano-gpt prepare_dataset"):
            loader(prepared, split="validation")
    finally:
        (directory / "manifest.moved").rename(directory / "manifest.json")
        (directory / PROGRESS).unlink()


def test_a_split_smaller_than_one_step_is_a_clear_error(prepared: tuple) -> None:
    with pytest.raises(NanoGPTError, match=r"2,500 tokens, fewer than one step needs.*\+ 1 = 2,561"):
        loader(prepared, split="validation", micro_batch_size=10, sequence_length=64, world_size=4)
