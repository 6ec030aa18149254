"""The tutorial's first model: a character-level GPT, end to end through the CLI on a corpus the test writes.

prepare_dataset --tokenizer=char, train (vocabulary from the dataset, shape by flags), resume bit-exact,
sample, eval and export, whose folder `transformers` loads and generates the same greedy text from; and a
karpathy/nanoGPT character-level ckpt.pt with its meta.pkl beside it.
"""

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_cli_here

TEXT = "".join(f"First Citizen:\nBefore we proceed any further, hear me speak {i}.\n\nAll:\nSpeak, speak.\n\n"
               for i in range(300))
# A baby GPT made smaller still, with a short schedule: a few seconds on a laptop CPU.
TRAIN = ["train", "--model=baby", "--tokenizer=char", "--n-layer=2", "--n-embd=32", "--n-head=2", "--block-size=32",
         "--micro-batch-size=4", "--total-batch-size=128", "--max-steps=6", "--warmup-steps=2", "--eval-steps=3",
         "--validation-steps=2", "--device=cpu", "--dtype=fp32", "--no-compile", "--checkpoint-steps=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A corpus prepared with --tokenizer=char and a run of six steps on it (checkpoints after steps 3 and 5)."""
    root = tmp_path_factory.mktemp("char")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    prepared = run_cli_here("prepare_dataset", f"--dataset={corpus}", "--tokenizer=char", f"--dataset-dir={root / 'ds'}",
                            "--num-workers=1")
    assert prepared.returncode == 0, prepared.stderr
    trained = run_cli_here(*TRAIN, f"--dataset={corpus}", f"--dataset-dir={root / 'ds'}",
                           f"--checkpoint-dir={root / 'run'}", "--no-prepare")
    assert trained.returncode == 0, trained.stderr
    return {"root": root, "corpus": corpus, "ds": root / "ds", "run": root / "run"}


def test_the_vocabulary_is_the_sorted_characters_of_the_corpus_and_fits_uint16(run: dict[str, Path]) -> None:
    (folder,) = [p for p in run["ds"].iterdir() if p.is_dir()]
    manifest = json.loads((folder / "train" / "manifest.json").read_text())
    assert folder.name.endswith(".char")
    assert manifest["tokenizer"] == {"kind": "char", "n_vocab": len(set(TEXT)), "eot_token": None,
                                     "chars": "".join(sorted(set(TEXT)))}
    assert manifest["dtype"] == "uint16"
    train = (folder / "train" / "shard_000000.bin").read_bytes()
    chars = manifest["tokenizer"]["chars"]
    # No end-of-text tokens: the shard is the text itself, one id per character, as nanoGPT's prepare.py writes.
    assert "".join(chars[i] for i in torch.frombuffer(bytearray(train), dtype=torch.int16).tolist()) == TEXT[
        len(TEXT) - manifest["tokens"]:]


def test_a_new_model_takes_its_vocabulary_and_shape_from_the_dataset_and_flags(run: dict[str, Path]) -> None:
    state = torch.load(run["run"] / "checkpoint_000005.bin", weights_only=True)
    n_chars = len(set(TEXT))
    assert state["model_config"] == {"block_size": 32, "vocab_size": 64 * -(-n_chars // 64), "n_layer": 2, "n_head": 2,
                                     "n_embd": 32, "layer_norm_epsilon": 1e-5}
    assert state["tokenizer"]["kind"] == "char" and state["tokenizer"]["n_vocab"] == n_chars
    config = json.loads((run["run"] / "train_log.jsonl").read_text().splitlines()[0])
    assert config["model_config"]["n_layer"] == 2 and "character-level" in config["tokenizer"]
    assert config["config"]["sequence_length"] == 32 and config["config"]["micro_batch_size"] == 4


def test_resuming_a_char_run_matches_the_uninterrupted_one_bit_for_bit(run: dict[str, Path], tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "checkpoint_000003.bin").write_bytes((run["run"] / "checkpoint_000003.bin").read_bytes())
    result = run_cli_here(*TRAIN, f"--dataset={run['corpus']}", f"--dataset-dir={run['ds']}",
                          f"--checkpoint-dir={resumed}", "--resume=auto", f"--log-file={tmp_path / 'log.jsonl'}")
    assert result.returncode == 0, result.stderr
    straight = torch.load(run["run"] / "checkpoint_000005.bin", weights_only=True)["model"]
    again = torch.load(resumed / "checkpoint_000005.bin", weights_only=True)["model"]
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_sample_eval_and_export_use_the_checkpoints_tokenizer_and_transformers_generates_the_same(
        run: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = run["run"] / "checkpoint_000005.bin"
    sampled = run_cli_here("sample", f"--checkpoint={checkpoint}", "--greedy", "--num-sequences=1", "--max-length=24",
                           "--device=cpu", "--dtype=fp32", "Speak")
    assert sampled.returncode == 0, sampled.stderr
    text = sampled.stdout.removeprefix("> ").removesuffix("\n")
    assert text.startswith("Speak") and len(text) == 24  # one token per character

    evaluated = run_cli_here("eval", f"--checkpoint={checkpoint}", f"--dataset={run['corpus']}",
                             f"--dataset-dir={run['ds']}", "--validation-steps=2", "--sequence-length=32",
                             "--device=cpu", "--dtype=fp32", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads(evaluated.stdout)
    assert summary["examples"] == 0 and 0 < summary["val_loss"] < 4.5  # HellaSwag skipped: not for characters
    refused = run_cli_here("eval", f"--checkpoint={checkpoint}", "--hellaswag-samples=5", "--device=cpu")
    assert_one_line_error(refused, "HellaSwag needs a tokenizer that encodes any text", "--hellaswag-samples=0")

    exported = run_cli_here("export", f"--checkpoint={checkpoint}", f"--export-dir={tmp_path / 'hf'}")
    assert exported.returncode == 0, exported.stderr
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert len(tokenizer) == model.config.vocab_size == len(set(TEXT))
    ids = tokenizer("Speak", return_tensors="pt").input_ids
    assert ids.shape == (1, 5)
    out = model.generate(ids, max_new_tokens=19, do_sample=False, attention_mask=torch.ones_like(ids),
                         pad_token_id=0)
    assert tokenizer.decode(out[0]) == text
    card = (tmp_path / "hf" / "README.md").read_text()
    assert f"a character-level tokenizer ({len(set(TEXT))} characters)" in card


def test_a_model_of_another_tokenizer_is_refused_before_step_0(run: dict[str, Path], tiny_hf_gpt2_vocab_dir: Path,
                                                                tmp_path: Path) -> None:
    result = run_cli_here(*TRAIN[:2], "--tokenizer=char", f"--dataset={run['corpus']}", f"--dataset-dir={run['ds']}",
                          f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--checkpoint-dir={tmp_path / 'ft'}",
                          "--device=cpu", "--no-compile", "--max-steps=2", "--warmup-steps=1")
    assert_one_line_error(result, "GPT-2's BPE tokenizer", "character-level tokenizer", "prepare the dataset with")
    assert not (tmp_path / "ft").exists() or not any((tmp_path / "ft").iterdir())


def test_shape_flags_are_checked_before_step_0(run: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli_here("train", "--model=baby", "--tokenizer=char", "--n-embd=30", "--n-head=4",
                          f"--dataset={run['corpus']}", f"--dataset-dir={run['ds']}", f"--checkpoint-dir={tmp_path}")
    assert_one_line_error(result, "--n-embd=30 is not divisible by --n-head=4")
    result = run_cli_here("train", "--model=baby", "--n-layer=0", f"--checkpoint-dir={tmp_path}")
    assert_one_line_error(result, "--n-layer=0 must be between 1 and")


def _nanogpt_char_checkpoint(folder: Path, chars: str) -> Path:
    """What karpathy/nanoGPT's train.py writes for shakespeare_char (its key names and model_args), and its
    data/shakespeare_char/prepare.py's meta.pkl, from a model of our own."""
    from nano_gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16))
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=32, bias=True, vocab_size=len(chars), dropout=0.0)
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 0, "best_val_loss": 9.9,
                "config": {"dataset": "shakespeare_char"}}, folder / "ckpt.pt")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)),
                     "stoi": {c: i for i, c in enumerate(chars)}}, f)
    return folder / "ckpt.pt"


def test_a_nanogpt_char_checkpoint_samples_with_the_meta_pkl_beside_it(tmp_path: Path) -> None:
    chars = "\n !abcdefghijklmnopqrstuvwxyz"
    checkpoint = _nanogpt_char_checkpoint(tmp_path, chars)
    result = run_cli_here("sample", f"--checkpoint={checkpoint}", "--num-sequences=1", "--max-length=20", "--seed=1",
                          "--device=cpu", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("> hello") and set(result.stdout[2:-1]) <= set(chars)
    exported = run_cli_here("export", f"--checkpoint={checkpoint}", f"--export-dir={tmp_path / 'hf'}")
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["vocab_size"] == len(chars)


def test_a_meta_pkl_that_names_a_class_is_refused_without_running_it(tmp_path: Path) -> None:
    checkpoint = _nanogpt_char_checkpoint(tmp_path, "ab\n ")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"itos": {0: "a"}, "x": Path("/")}))
    result = run_cli_here("sample", f"--checkpoint={checkpoint}", f"--meta={tmp_path / 'evil.pkl'}", "--device=cpu")
    assert_one_line_error(result, "evil.pkl is not nanoGPT's meta.pkl of plain data")


def test_serve_answers_a_prompt_outside_the_vocabulary_with_a_400_and_stays_up(run: dict[str, Path]) -> None:
    import httpx

    from test_serve import Server

    s = Server(run["run"] / "checkpoint_000005.bin")
    try:
        for prompt in ("Speak é", ["Speak", "日本"]):
            response = httpx.post(s.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2}, timeout=30)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "prompt" and "not in the model's vocabulary" in error["message"]
        answer = httpx.post(s.url + "/v1/completions", json={"prompt": "Speak", "max_tokens": 2}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()["choices"][0]["text"]) == 2
    finally:
        s.stop()
