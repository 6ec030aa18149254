"""Validation loss over a prepared split, and both evaluations summed over ranks under DDP (gloo)."""

import json
import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nano_gpt import GPT, GPTConfig
from nano_gpt.data import ShardLoader, prepare_dataset
from nano_gpt.eval import HellaSwagExample, evaluate_hellaswag, validation_loss

B, T = 2, 32


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()


def examples() -> list[HellaSwagExample]:
    rng = random.Random(0)
    words = "the cat sat on a mat and then ran off to sea".split()
    return [HellaSwagExample(" ".join(rng.choices(words, k=rng.randint(2, 20))),
                             tuple(" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(4)), i % 4)
            for i in range(9)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(dataset dir, dataset name) of a small corpus with a 3,000-token validation split."""
    folder = tmp_path_factory.mktemp("validation")
    rng = random.Random(1)
    corpus = folder / "corpus.txt"
    corpus.write_text(" ".join(rng.choice(["the king", "a horse", "my lord", "shall", "rain", "O"]) for _ in range(6000)))
    prepare_dataset(str(corpus), dataset_dir=folder / "ds", validation_tokens=3000, num_workers=1)
    return folder / "ds", str(corpus)


def mean_loss_of_first_batches(model: GPT, loader: ShardLoader, steps: int) -> float:
    loader.reset()
    with torch.no_grad():
        return sum(model(*loader.next_batch(), return_logits=False)[1].item() for _ in range(steps)) / steps


def test_validation_loss_is_the_mean_over_the_first_batches_every_time(prepared: tuple[Path, str]) -> None:
    model = tiny_model()
    loader = ShardLoader(*prepared, "validation", B, T)
    expected = mean_loss_of_first_batches(model, ShardLoader(*prepared, "validation", B, T), 3)
    for _ in range(5):
        loader.next_batch()  # wherever the loader stands, validation starts from its first batch
    assert validation_loss(model, loader, 3, "cpu") == pytest.approx(expected, rel=1e-6)
    assert validation_loss(model, loader, 3, "cpu") == pytest.approx(expected, rel=1e-6)
    assert validation_loss(model, loader, 1, "cpu") != pytest.approx(expected, rel=1e-6)


def test_validation_leaves_a_training_model_in_training_mode(prepared: tuple[Path, str]) -> None:
    model = tiny_model().train()
    validation_loss(model, ShardLoader(*prepared, "validation", B, T), 1, "cpu")
    assert model.training


def _ddp_worker(rank: int, world_size: int, store: str, dataset: tuple[Path, str], out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        model = tiny_model()
        result = evaluate_hellaswag(model, examples(), "cpu", batch_size=2, rank=rank, world_size=world_size)
        loader = ShardLoader(*dataset, "validation", B, T, rank=rank, world_size=world_size)
        loss = validation_loss(model, loader, 2, "cpu")
        (out / f"rank{rank}.json").write_text(json.dumps([result.total, result.correct, result.correct_norm, loss]))
    finally:
        dist.destroy_process_group()


def test_under_ddp_ranks_split_the_work_and_share_the_totals(prepared: tuple[Path, str], tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), prepared, tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    whole = evaluate_hellaswag(tiny_model(), examples(), "cpu")
    model = tiny_model()
    per_rank = [mean_loss_of_first_batches(model, ShardLoader(*prepared, "validation", B, T, rank=r, world_size=2), 2)
                for r in range(2)]
    assert whole.total == 9 and per_rank[0] != pytest.approx(per_rank[1])
    for total, correct, correct_norm, loss in ranks:
        assert [total, correct, correct_norm] == [whole.total, whole.correct, whole.correct_norm]
        assert loss == pytest.approx(sum(per_rank) / 2, rel=1e-5)
