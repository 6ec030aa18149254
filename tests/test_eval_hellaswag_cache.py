"""HellaSwag examples are tokenized once, however often training evaluates them."""

import pytest
import torch

from nano_gpt import GPT, GPTConfig
from nano_gpt.eval import HellaSwagExample, evaluate_hellaswag
from nano_gpt.eval import hellaswag as hellaswag_module


def test_repeated_evaluations_tokenize_each_example_once_and_score_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    hellaswag_module._packed.cache_clear()
    calls: list[HellaSwagExample] = []
    tokenize = hellaswag_module._tokenize
    monkeypatch.setattr(hellaswag_module, "_tokenize", lambda example, *a: calls.append(example) or tokenize(example, *a))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)).eval()
    examples = [HellaSwagExample(f"A man walks {i} dogs", ("home.", " away.", "in the rain.", "on."), i % 4)
                for i in range(6)]
    first = evaluate_hellaswag(model, examples, "cpu")
    second = evaluate_hellaswag(model, examples, "cpu", batch_size=2)
    assert first == second and first.total == 6
    assert sorted(calls, key=examples.index) == examples  # once each, over both evaluations
    evaluate_hellaswag(GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16)), examples, "cpu")
    assert len(calls) == 12  # another context window cuts differently: packed again
