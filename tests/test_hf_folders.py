"""Hugging Face model folders as transformers reads them: GPT2Config's defaults and aliases, every field and
file checked (one line naming the file and the field), and a folder's own tokenizer used for sample and eval."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast

import nano_gpt.hub
from conftest import assert_one_line_error, run_cli, run_cli_here, save_tiny_hf_gpt2
from nano_gpt import GPT, GPTConfig, generate, get_tokenizer, load_pretrained
from nano_gpt.errors import NanoGPTError
from nano_gpt.eval import evaluate_hellaswag, load_hellaswag
from nano_gpt.export import export_model
from nano_gpt.hf import CONV1D_WEIGHTS
from nano_gpt.checkpoint import read_checkpoint
from nano_gpt.tokenizer import HFTokenizer, bpe_file, load_tokenizer

SPANISH = ["El perro come pan en la casa.", "¿Cómo estás? Muy bien, gracias.", "La niña lee un libro rojo.",
           "Mañana vamos a la playa con mis amigos.", "El señor compró café y azúcar."]


def _config_dict(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _logits(model: torch.nn.Module, vocab: int, hf: bool = False) -> torch.Tensor:
    idx = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(idx).logits if hf else model(idx)[0]


def save_seed_export(folder: Path, model: GPT) -> Path:
    """What the seed's `nano-gpt export` writes: its GPTConfig fields plus n_ctx (no n_positions) and its run's
    settings in config.json; `transformer.`-prefixed keys in Conv1D orientation, with its causal-mask buffers."""
    folder.mkdir(parents=True)
    c = model.config
    weights = {}
    for key, value in model.state_dict().items():
        weights[key] = (value.t() if key.endswith(CONV1D_WEIGHTS) else value).contiguous().clone()
    for i in range(c.n_layer):
        weights[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(c.block_size, c.block_size))[None, None]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt", "model_name": "checkpoint_019072"})
    sizes = {"block_size": c.block_size, "vocab_size": c.vocab_size, "n_layer": c.n_layer, "n_head": c.n_head,
             "n_embd": c.n_embd}
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_ctx": c.block_size, **sizes,
              "val_loss_accum": 3.0712, "train_config": {"seed": 1337, "max_steps": 19073},
              "dataset_config": {"dataset_name": "finewebedu"},
              "task_specific_params": {"eval_config": {"validation_steps": 20, "hellaswag_samples": None}}}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    return folder


def test_the_seeds_export_folder_takes_its_context_from_n_ctx(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=48, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)).eval()
    folder = save_seed_export(tmp_path / "export", model)
    assert "n_positions" not in _config_dict(folder)
    loaded = load_pretrained(str(folder))
    assert loaded.config == model.config
    assert torch.equal(_logits(loaded, 50257), _logits(model, 50257))


def test_config_json_fields_get_transformers_defaults(tmp_path: Path) -> None:
    folder = save_tiny_hf_gpt2(tmp_path / "m", n_positions=1024, vocab_size=500, n_layer=2, n_head=2, n_embd=16)
    # Only the fields without a GPT2Config default of the same value; n_positions falls back to 1024.
    (folder / "config.json").write_text(json.dumps({"vocab_size": 500, "n_layer": 2, "n_head": 2, "n_embd": 16}))
    loaded = load_pretrained(str(folder))
    assert (loaded.config.block_size, loaded.config.layer_norm_epsilon) == (1024, 1e-5)
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    assert (_logits(loaded, 500) - _logits(hf, 500, hf=True)).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (b"[1, 2]", ["is a JSON list, not an object"]),
        (b"\xff\xfe{\x00}\x00", ["not UTF-8"]),
        (b'{"n_head": 6,', ["not valid JSON", "line 1"]),
        (b"[" * 100_000, ["nested too deeply"]),
        ({"n_head": 0}, ["n_head=0 is out of range"]),
        ({"n_head": 5}, ["n_head=5 does not divide n_embd=48"]),
        ({"n_positions": -1}, ["n_positions=-1 is out of range"]),
        ({"n_positions": 10**12}, ["n_positions=1000000000000 is out of range"]),
        ({"vocab_size": 0}, ["vocab_size=0 is out of range"]),
        ({"vocab_size": "1000"}, ["'vocab_size'", "expected int"]),
        ({"n_layer": 10**9}, ["n_layer=1000000000 is out of range"]),
        ({"n_embd": True}, ["'n_embd'", "expected int"]),
        ({"n_embd": 2**70}, ["n_embd=1180591620717411303424 is out of range"]),
        ({"layer_norm_epsilon": -1.0}, ["layer_norm_epsilon is -1.0"]),
        ({"layer_norm_epsilon": float("nan")}, ["layer_norm_epsilon is nan"]),
        ({"model_type": "bert"}, ["model_type is 'bert'"]),
        ({"activation_function": "relu"}, ["activation_function='relu'"]),
        ({"tie_word_embeddings": False}, ["tie_word_embeddings=False"]),
        ({"n_positions": 128}, ["wpe.weight has shape (64, 48)", "n_positions (block_size) is 128"]),
        ({"n_layer": 2}, ["3 layers", "n_layer=2"]),
        ({"n_ctx": "x", "n_positions": None}, ["'n_ctx'", "expected int"]),  # n_ctx stands in for n_positions
    ],
)
def test_a_bad_config_json_is_one_line_naming_the_file_and_field(tmp_path: Path, tiny_hf_dir: Path,
                                                                  content: bytes | dict, fragments: list[str]) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_dir, folder)
    if isinstance(content, dict):
        config = {k: v for k, v in {**_config_dict(folder), **content}.items() if v is not None}
        content = json.dumps(config).encode()
    (folder / "config.json").write_bytes(content)
    with pytest.raises(NanoGPTError) as e:
        load_pretrained(str(folder))
    assert all(f in str(e.value) for f in ["config.json", *fragments]), str(e.value)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)  # what a malicious pickle would do, harmlessly


@pytest.mark.parametrize("kind", ["garbage", "code", "not a dict", "not tensors", "empty"])
def test_a_bad_pytorch_model_bin_is_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    folder = save_tiny_hf_gpt2(tmp_path / "m", as_bin=True)
    weights = folder / "pytorch_model.bin"
    marker = tmp_path / "ran"
    if kind == "garbage":
        weights.write_bytes(os.urandom(2048))
    elif kind == "code":
        torch.save({"wte.weight": torch.zeros(2), "hook": _RunsCode(marker)}, weights)
    elif kind == "not a dict":
        torch.save([torch.zeros(2)], weights)
    elif kind == "not tensors":
        torch.save({"wte.weight": [0.0, 1.0]}, weights)
    else:
        weights.write_bytes(b"")
    expected = {"garbage": "corrupt", "code": "refuses to load", "not a dict": "named tensors",
                "not tensors": "named tensors", "empty": "corrupt"}[kind]
    with pytest.raises(NanoGPTError, match=expected) as e:
        load_pretrained(str(folder))
    assert str(weights) in str(e.value) and not marker.exists()


def test_bad_files_through_the_cli_are_one_error_line(tmp_path: Path, tiny_hf_dir: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(tiny_hf_dir, folder)
    (folder / "config.json").write_text(json.dumps({**_config_dict(folder), "n_head": 0}))
    assert_one_line_error(run_cli_here("sample", f"--pretrained={folder}", "--device=cpu"), "config.json", "n_head=0")
    bin_folder = save_tiny_hf_gpt2(tmp_path / "b", as_bin=True)
    torch.save({"hook": _RunsCode(tmp_path / "ran")}, bin_folder / "pytorch_model.bin")
    assert_one_line_error(run_cli_here("eval", f"--pretrained={bin_folder}", "--validation-steps=0",
                                  "--hellaswag-samples=0"), "pytorch_model.bin", "refuses to load")
    assert not (tmp_path / "ran").exists()


def test_a_prompt_outside_the_models_vocabulary_is_one_error_line(tiny_hf_dir: Path) -> None:
    # tiny_hf_dir has 1000 tokens and no tokenizer of its own: GPT-2's ids for "Hello world" are beyond it.
    assert_one_line_error(run_cli_here("sample", f"--pretrained={tiny_hf_dir}", "--device=cpu", "Hello world"),
                          "token id 15496", "vocabulary has 1000 tokens")


# A folder with a tokenizer of its own: a byte-level BPE trained on Spanish, as many Hub GPT-2s have.

def _spanish_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|fin|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SPANISH * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|fin|>")


@pytest.fixture(scope="module")
def spanish_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 whose vocabulary is its own tokenizer's (tokenizer.json and tokenizer_config.json)."""
    folder = tmp_path_factory.mktemp("spanish") / "gpt2-es"
    tokenizer = _spanish_tokenizer()
    save_tiny_hf_gpt2(folder, vocab_size=len(tokenizer), n_positions=64)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_folders_own_tokenizer_is_used(spanish_dir: Path) -> None:
    loaded = read_checkpoint(str(spanish_dir))
    model, tokenizer = loaded.model, loaded.tokenizer()
    reference = AutoTokenizer.from_pretrained(spanish_dir)
    assert isinstance(tokenizer, HFTokenizer) and tokenizer.n_vocab == model.config.vocab_size == len(reference)
    text = "¿Cómo está el señor?"
    ids = tokenizer.encode_ordinary(text)
    assert ids == reference.encode(text, add_special_tokens=False) and tokenizer.decode(ids) == text
    assert tokenizer.eot_token == reference.convert_tokens_to_ids("<|fin|>")
    # Streaming decodes token by token: the bytes of "ó" may be split across tokens, and join up again.
    assert b"".join(tokenizer.decode_single_token_bytes(t) for t in ids).decode("utf-8") == text


def test_vocab_json_and_merges_txt_alone_are_the_same_tokenizer(spanish_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "slow"
    folder.mkdir()
    _spanish_tokenizer().backend_tokenizer.model.save(str(folder))  # vocab.json and merges.txt
    shutil.copy(spanish_dir / "config.json", folder)
    text = "La niña come pan."
    assert load_tokenizer(folder).encode_ordinary(text) == load_tokenizer(spanish_dir).encode_ordinary(text)


def test_sample_continues_with_the_folders_tokenizer(spanish_dir: Path) -> None:
    prompt = "El perro come"
    result = run_cli("sample", f"--pretrained={spanish_dir}", "--greedy", "--max-length=24", "--num-sequences=2",
                     "--device=cpu", "--dtype=fp32", prompt)
    assert result.returncode == 0, result.stderr
    reference = AutoTokenizer.from_pretrained(spanish_dir)
    model = load_pretrained(str(spanish_dir))
    ids = reference.encode(prompt, add_special_tokens=False)
    [tokens, _] = generate(model, torch.tensor([ids] * 2), 24 - len(ids), greedy=True,
                           eos_token=reference.eos_token_id, vocab_size=len(reference))
    assert result.stdout.splitlines() == ["> " + reference.decode(tokens)] * 2


def test_streamed_sample_with_the_folders_tokenizer_prints_the_models_text(spanish_dir: Path) -> None:
    result = run_cli("sample", f"--pretrained={spanish_dir}", "--seed=5", "--max-length=30", "--num-sequences=1",
                     "--device=cpu", "--dtype=fp32", "Mañana")
    assert result.returncode == 0, result.stderr
    reference = AutoTokenizer.from_pretrained(spanish_dir)
    ids = reference.encode("Mañana", add_special_tokens=False)
    [tokens] = generate(load_pretrained(str(spanish_dir)), torch.tensor([ids]), 30 - len(ids),
                        generator=torch.Generator().manual_seed(5), eos_token=reference.eos_token_id,
                        vocab_size=len(reference))
    assert result.stdout == "> " + reference.decode(tokens) + "\n"


def test_eval_scores_hellaswag_with_the_folders_tokenizer(spanish_dir: Path, tmp_path: Path) -> None:
    rows = [{"ctx": "El perro", "endings": ["come pan.", "lee un libro.", "va a la playa.", "compró café."],
             "label": 0}, {"ctx": "La niña", "endings": ["lee un libro rojo.", "come azúcar.", "está bien.",
                                                          "va a la casa."], "label": 0}]
    hellaswag = tmp_path / "hellaswag_es.jsonl"
    hellaswag.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("eval", f"--pretrained={spanish_dir}", f"--hellaswag-file={hellaswag}", "--validation-steps=0",
                     "--device=cpu", "--dtype=fp32", "--json")
    assert result.returncode == 0, result.stderr
    model = load_pretrained(str(spanish_dir))
    expected = evaluate_hellaswag(model, load_hellaswag(hellaswag), "cpu", tokenizer=HFTokenizer(spanish_dir))
    summary = json.loads(result.stdout)
    assert (summary["correct"], summary["correct_norm"]) == (expected.correct, expected.correct_norm)
    with pytest.raises(NanoGPTError, match="vocabulary has"):  # GPT-2's ids do not fit this model
        evaluate_hellaswag(model, load_hellaswag(hellaswag), "cpu")


def test_a_model_with_its_own_tokenizer_exports_with_it(spanish_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    result = run_cli("export", f"--pretrained={spanish_dir}", f"--export-dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    text = "El perro come la manzana roja."
    exported, own = AutoTokenizer.from_pretrained(tmp_path / "out"), AutoTokenizer.from_pretrained(spanish_dir)
    assert exported.encode(text) == own.encode(text) and exported.eos_token_id == own.eos_token_id


def test_gpt2s_own_tokenizer_files_or_none_keep_the_offline_gpt2_tokenizer(tiny_hf_gpt2_vocab_dir: Path,
                                                                           tmp_path: Path) -> None:
    exported = export_model(load_pretrained(str(tiny_hf_gpt2_vocab_dir)), tmp_path / "export")
    assert (exported / "tokenizer.json").exists() and load_tokenizer(exported) is get_tokenizer()
    slow = tmp_path / "slow"
    slow.mkdir()
    shutil.copy(bpe_file("encoder.json"), slow / "vocab.json")
    shutil.copy(bpe_file("vocab.bpe"), slow / "merges.txt")
    assert load_tokenizer(slow) is get_tokenizer()
    assert load_tokenizer(tiny_hf_gpt2_vocab_dir) is get_tokenizer()  # no tokenizer files at all


def test_a_hub_repo_brings_its_tokenizer_files(spanish_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The Hub is replaced by a folder: files it lacks are EntryNotFoundError, as on the Hub."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    snapshot = tmp_path / "cache" / "snapshot"
    snapshot.mkdir(parents=True)

    def fake_download(repo_id: str, filename: str, local_files_only: bool = False) -> str:
        assert repo_id == "someone/gpt2-es"
        if local_files_only and not (snapshot / filename).exists():
            raise LocalEntryNotFoundError(filename)
        if not (spanish_dir / filename).exists():
            raise EntryNotFoundError(filename)
        shutil.copy(spanish_dir / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(nano_gpt.hub, "hub_reachable", lambda: True)
    tokenizer = read_checkpoint("someone/gpt2-es").tokenizer()
    assert isinstance(tokenizer, HFTokenizer) and (snapshot / "tokenizer.json").exists()
