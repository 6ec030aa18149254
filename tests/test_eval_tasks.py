"""`nano-gpt eval --tasks`: lm-evaluation-harness tasks in-process, on a local task made here (offline)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lm_eval.api.instance import Instance

from conftest import assert_one_line_error, run_cli_here
from nano_gpt.checkpoint import read_checkpoint
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval.harness import NanoGPTLM, resolve_tasks
from nano_gpt.generate import generate

CONTEXTS = ["A man is cooking dinner. He", "The children run to the park and", "She opens the old book, then",
            "The dog barks at the mailman while", "Two players shake hands before they", "The chef slices the bread and"]
ENDINGS = [["cuts the onions.", "flies to the moon.", "reads a book about ships.", "sings loudly."],
           ["play on the swings.", "eat a car.", "laugh at the clouds together.", "sleep."],
           ["reads the first page aloud.", "drives away.", "turns into a bird.", "cries."]]


def hellaswag_file(path: Path) -> Path:
    rows = [{"ctx": ctx, "endings": ENDINGS[i % 3], "label": (i * 7) % 4} for i, ctx in enumerate(CONTEXTS * 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task_yaml(folder: Path, data: Path) -> Path:
    """A HellaSwag-shaped lm-eval task over a local jsonl (`dataset_path: json`): no download."""
    path = folder / "local_hellaswag.yaml"
    path.write_text(f"""task: local_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
  cache_dir: {folder / "datasets-cache"}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{endings}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
    return path


def test_tasks_give_the_same_accuracy_as_the_builtin_hellaswag(tiny_hf_gpt2_vocab_dir: Path, tmp_path: Path) -> None:
    data = hellaswag_file(tmp_path / "hs.jsonl")
    model = ["--pretrained", str(tiny_hf_gpt2_vocab_dir), "--device=cpu", "--dtype=fp32", "--json"]
    builtin = run_cli_here("eval", *model, f"--hellaswag-file={data}", "--validation-steps=0")
    assert builtin.returncode == 0, builtin.stderr
    harness = run_cli_here("eval", *model, f"--tasks={task_yaml(tmp_path, data)}", "--batch-size=5")
    assert harness.returncode == 0, harness.stderr
    ours = json.loads(builtin.stdout)
    theirs = json.loads(harness.stdout)["results"]["local_hellaswag"]
    # Our `acc` picks the lowest total loss: lm-eval's `acc` (its acc_norm divides by bytes, ours by tokens).
    assert theirs["acc,none"] == pytest.approx(ours["acc"])
    assert 0 < ours["correct"] < ours["examples"] == len(CONTEXTS) * 3
    table = run_cli_here("eval", *model[:-1], f"--tasks={task_yaml(tmp_path, data)}")
    assert "local_hellaswag" in table.stdout and "acc" in table.stdout


@pytest.fixture(scope="module")
def lm(tiny_hf_gpt2_vocab_dir: Path) -> NanoGPTLM:
    loaded = read_checkpoint(str(tiny_hf_gpt2_vocab_dir))
    model, tokenizer = loaded.model, loaded.tokenizer()
    return NanoGPTLM(model, tokenizer, torch.device("cpu"), None, batch_size=3)


def request(kind: str, *args: object) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_is_the_continuations_log_probability(lm: NanoGPTLM) -> None:
    pairs = [("The cat sat on", " the mat"), ("", "Hello there"), ("A long context " * 3, "ends here.")] * 2
    scores = lm.loglikelihood([request("loglikelihood", *p) for p in pairs])
    pairs[2] = pairs[5] = ("A long context " * 3)[:-1], " ends here."  # a trailing space goes with the continuation
    for (context, continuation), (logprob, _) in zip(pairs, scores):
        ctx = lm.tokenizer.encode_ordinary(context) or [lm.eot]
        cont = lm.tokenizer.encode_ordinary(continuation)
        with torch.no_grad():
            logits = lm.model(torch.tensor([ctx + cont]))[0][0, len(ctx) - 1 : -1]  # predicting each continuation token
        want = logits.log_softmax(-1).gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert logprob == pytest.approx(want, abs=1e-4)


def test_rolling_loglikelihood_covers_a_text_longer_than_the_context(lm: NanoGPTLM) -> None:
    text = "one two three four five six seven eight nine ten " * 20  # past the 128-token context
    ids = lm.tokenizer.encode_ordinary(text)
    assert len(ids) > lm.block_size
    [total] = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    short = "one two three"
    [short_total] = lm.loglikelihood_rolling([request("loglikelihood_rolling", short)])
    assert short_total == pytest.approx(lm.loglikelihood([request("loglikelihood", "", short)])[0][0], abs=1e-4)
    assert total < short_total < 0


def test_generate_until_is_greedy_and_stops_at_until(lm: NanoGPTLM) -> None:
    context = "Once upon a time"
    ids = lm.tokenizer.encode_ordinary(context)
    [row] = generate(lm.model, torch.tensor([ids]), 12, greedy=True, vocab_size=lm.tokenizer.n_vocab)
    full = lm.tokenizer.decode(row[len(ids):])
    stop = full[6:9]
    texts = lm.generate_until([request("generate_until", context, {"until": [stop], "max_gen_toks": 12}),
                               request("generate_until", context, {"max_gen_toks": 12})])
    assert texts == [full[: full.index(stop)], full]


def test_unknown_task_is_a_one_line_error_with_near_names(tiny_hf_gpt2_vocab_dir: Path) -> None:
    known = SimpleNamespace(all_tasks=["arc_easy", "hellaswag", "piqa"])  # lm-eval's index, without seconds of indexing
    with pytest.raises(NanoGPTError, match="no task 'hellaswagg'; did you mean hellaswag"):
        resolve_tasks(["piqa", "hellaswagg"], known)
    with pytest.raises(NanoGPTError, match="missing.yaml not found"):
        resolve_tasks(["missing.yaml"], known)
    result = run_cli_here("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--tasks=hellaswag", "--dataset=x")
    assert_one_line_error(result, "--tasks")
    assert_one_line_error(run_cli_here("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--tasks=,"), "--tasks is empty")
