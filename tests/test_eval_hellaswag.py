"""HellaSwag: loading, bad files, and scoring that matches one-by-one scoring and `transformers`."""

import json
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from nano_gpt import GPT, GPTConfig, get_tokenizer, load_pretrained
from nano_gpt.errors import NanoGPTError
from nano_gpt.tokenizer import EOT_TOKEN
from nano_gpt.eval import ExampleScore, HellaSwagExample, evaluate_hellaswag, load_hellaswag
from nano_gpt.eval import hellaswag as hellaswag_module

WORDS = "a man woman dog is runs into the water then kitchen knife cuts bread slowly [step] [title] ,.".split()


def make_examples(n: int, seed: int = 0, max_ctx_words: int = 40) -> list[HellaSwagExample]:
    """Examples of varied lengths, made of words the GPT-2 tokenizer knows."""
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [HellaSwagExample(words(1, max_ctx_words), tuple(words(1, 15) for _ in range(4)), rng.randrange(4))
            for _ in range(n)]


def write_jsonl(path: Path, examples: list[HellaSwagExample]) -> Path:
    lines = [json.dumps({"ctx": e.ctx, "endings": list(e.endings), "label": e.label, "ind": i}) for i, e in enumerate(examples)]
    path.write_text("\n".join(lines) + "\n")
    return path


def scores(model: torch.nn.Module, examples: list[HellaSwagExample], **kwargs) -> dict[int, ExampleScore]:  # noqa: ANN003
    out: dict[int, ExampleScore] = {}
    evaluate_hellaswag(model, examples, "cpu", on_result=lambda s: out.__setitem__(s.index, s), **kwargs)
    return out


@pytest.fixture(scope="module")
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()


def test_load_reads_ctx_endings_label_and_stops_at_the_limit(tmp_path: Path) -> None:
    examples = make_examples(5)
    path = write_jsonl(tmp_path / "hs.jsonl", examples)
    assert load_hellaswag(path) == examples
    assert load_hellaswag(str(path), limit=2) == examples[:2]


def test_string_labels_as_in_the_hugging_face_copy_are_read_as_ints(tmp_path: Path) -> None:
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps({"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "2"}) + "\n")
    assert load_hellaswag(path)[0].label == 2


def test_the_cached_download_is_read_when_no_file_is_given(nano_cache: Path) -> None:
    examples = make_examples(3)
    (nano_cache / "hellaswag").mkdir()
    write_jsonl(nano_cache / "hellaswag" / "hellaswag_val.jsonl", examples)
    assert load_hellaswag(None) == examples


def test_offline_without_a_copy_says_where_to_put_it(nano_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hellaswag_module, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # refused at once
    with pytest.raises(NanoGPTError) as e:
        load_hellaswag(None)
    assert str(nano_cache / "hellaswag" / "hellaswag_val.jsonl") in str(e.value) and "\n" not in str(e.value)


GOOD = {"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1}


@pytest.mark.parametrize(
    ("second_line", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({**GOOD, "label": 4}), "label 4 is out of range"),
        (json.dumps({**GOOD, "label": -1}), "label -1 is out of range"),
        (json.dumps({**GOOD, "endings": ["a", "b", "c"]}), "3 endings, expected 4"),
        (json.dumps({**GOOD, "endings": "abcd"}), "'endings' is not a list"),
        (json.dumps({"endings": ["a", "b", "c", "d"], "label": 0}), "no string 'ctx'"),
        ("[1, 2]", "not a JSON object"),
        ('{"ctx": "\xff"}', "not valid JSON"),  # written as latin-1: not UTF-8
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path: Path, second_line: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + second_line.encode("latin-1") + b"\n")
    with pytest.raises(NanoGPTError, match=fragment) as e:
        load_hellaswag(path)
    assert str(e.value).startswith(f"{path}, line 2: ") and "\n" not in str(e.value)


def test_an_empty_or_missing_file_is_one_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(NanoGPTError, match=re.escape(f"{empty}, line 1: the file is empty")):
        load_hellaswag(empty)
    with pytest.raises(NanoGPTError, match="not found"):
        load_hellaswag(tmp_path / "missing.jsonl")


def test_acc_picks_the_lowest_total_loss_and_acc_norm_the_lowest_mean() -> None:
    score = ExampleScore(0, label=1, losses=(4.0, 6.0, 5.0, 9.0), mean_losses=(2.0, 1.5, 5.0, 3.0))
    assert (score.pred, score.pred_norm) == (0, 1)


def reference_losses(model: GPT, example: HellaSwagExample, ctx_tokens: list[int] | None = None) -> list[float]:
    """Each candidate on its own through GPT.forward: the loss summed over the ending's tokens."""
    enc = get_tokenizer()
    ctx, losses = ctx_tokens or enc.encode_ordinary(example.ctx), []
    for ending in example.endings:
        end = enc.encode_ordinary(" " + ending)
        tokens = torch.tensor([ctx + end])  # (1, T)
        with torch.no_grad():
            logits, _ = model(tokens)
        token_losses = F.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction="none")  # (T - 1,)
        losses.append(token_losses[len(ctx) - 1 :].sum().item())
    return losses


def test_batched_scoring_gives_the_results_of_scoring_one_by_one(tiny_gpt: GPT, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hellaswag_module, "MAX_PADDING", 1.0)  # batch any lengths together: plenty of padding
    batch_rows: list[int] = []
    hook = tiny_gpt.transformer.wte.register_forward_hook(lambda _m, args, _out: batch_rows.append(args[0].shape[0]))
    examples = make_examples(13, seed=1)
    try:
        batched = scores(tiny_gpt, examples, batch_size=5)
    finally:
        hook.remove()
    assert batch_rows == [5, 5, 3]
    single = scores(tiny_gpt, examples, batch_size=1)
    assert sorted(batched) == sorted(single) == list(range(13))
    for i, example in enumerate(examples):
        assert (batched[i].pred, batched[i].pred_norm) == (single[i].pred, single[i].pred_norm)
        assert batched[i].losses == pytest.approx(single[i].losses, rel=1e-6, abs=1e-5)
        assert batched[i].losses == pytest.approx(reference_losses(tiny_gpt, example), rel=1e-6, abs=1e-5)
        n_tokens = [len(get_tokenizer().encode_ordinary(" " + e)) for e in example.endings]
        assert batched[i].mean_losses == pytest.approx([s / n for s, n in zip(batched[i].losses, n_tokens)])


def test_batches_hold_rows_of_similar_length_so_padding_stays_under_a_tenth() -> None:
    rows = [(i, hellaswag_module._PackedRow([0] * n, [], [], [], 1, [])) for i, n in enumerate([100, 95, 91, 89, 50, 49, 44, 10])]
    batches = hellaswag_module._similar_length_batches(rows, batch_size=3)
    assert [[len(row.tokens) for _, row in batch] for batch in batches] == [[100, 95, 91], [89], [50, 49], [44], [10]]


def test_result_counts_match_the_examples_scores(tiny_gpt: GPT) -> None:
    examples = make_examples(9, seed=2)
    seen = scores(tiny_gpt, examples)
    result = evaluate_hellaswag(tiny_gpt, examples, "cpu", batch_size=4)
    assert result.total == 9
    assert result.correct == sum(s.pred == s.label for s in seen.values())
    assert result.correct_norm == sum(s.pred_norm == s.label for s in seen.values())
    assert (result.acc, result.acc_norm) == (result.correct / 9, result.correct_norm / 9)


def test_contexts_longer_than_the_window_are_cut_from_the_left(tiny_gpt: GPT) -> None:
    enc = get_tokenizer()
    long = make_examples(1, seed=3, max_ctx_words=1)[0]
    long = HellaSwagExample(" ".join(["the knife cuts bread"] * 40), long.endings, long.label)  # 160 tokens > 64
    longest = max(len(enc.encode_ordinary(" " + e)) for e in long.endings)
    kept = enc.decode(enc.encode_ordinary(long.ctx)[-(64 - longest) :])
    cut = HellaSwagExample(kept, long.endings, long.label)
    assert enc.encode_ordinary(kept) == enc.encode_ordinary(long.ctx)[-(64 - longest) :]
    assert scores(tiny_gpt, [long])[0].losses == pytest.approx(reference_losses(tiny_gpt, cut), rel=1e-6, abs=1e-5)


def test_an_empty_context_is_scored_after_endoftext(tiny_gpt: GPT) -> None:
    example = make_examples(1, seed=6)[0]
    empty = HellaSwagExample("", example.endings, example.label)
    expected = reference_losses(tiny_gpt, example, ctx_tokens=[EOT_TOKEN])
    assert scores(tiny_gpt, [empty])[0].losses == pytest.approx(expected, rel=1e-6, abs=1e-5)


def test_ranks_score_disjoint_examples_that_add_up_to_all(tiny_gpt: GPT) -> None:
    examples = make_examples(7, seed=4)
    parts = [scores(tiny_gpt, examples, rank=r, world_size=3) for r in range(3)]
    assert [sorted(p) for p in parts] == [[0, 3, 6], [1, 4], [2, 5]]
    whole = evaluate_hellaswag(tiny_gpt, examples, "cpu")
    counts = [evaluate_hellaswag(tiny_gpt, examples, "cpu", rank=r, world_size=3) for r in range(3)]
    assert sum(c.total for c in counts) == whole.total and sum(c.correct_norm for c in counts) == whole.correct_norm


def test_scoring_leaves_a_training_model_in_training_mode(tiny_gpt: GPT) -> None:
    tiny_gpt.train()
    try:
        evaluate_hellaswag(tiny_gpt, make_examples(2), "cpu")
        assert tiny_gpt.training
    finally:
        tiny_gpt.eval()


def test_scores_match_transformers_on_a_tiny_random_gpt2(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    """Independent reference: the same saved weights scored by `transformers` directly."""
    examples = load_hellaswag(write_jsonl(tmp_path / "hs.jsonl", make_examples(10, seed=5)))
    ours = scores(load_pretrained(str(tiny_hf_gpt2_vocab_dir)), examples, batch_size=4)
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf_gpt2_vocab_dir).eval()
    enc = get_tokenizer()
    for i, example in enumerate(examples):
        ctx = enc.encode_ordinary(example.ctx)
        totals, means = [], []
        for ending in example.endings:
            end = enc.encode_ordinary(" " + ending)
            tokens = torch.tensor([ctx + end])
            with torch.no_grad():
                logits = hf(tokens).logits  # (1, T, V)
            token_losses = F.cross_entropy(logits[0, len(ctx) - 1 : -1], tokens[0, len(ctx) :], reduction="none")
            totals.append(token_losses.sum().item())
            means.append(token_losses.mean().item())
        assert ours[i].losses == pytest.approx(totals, abs=1e-4)
        assert ours[i].mean_losses == pytest.approx(means, abs=1e-4)
        assert ours[i].pred == min(range(4), key=totals.__getitem__)
        assert ours[i].pred_norm == min(range(4), key=means.__getitem__)
