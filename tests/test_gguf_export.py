"""`nano-gpt export --format=gguf`: a file llama.cpp's gpt2 architecture loads, read back with gguf's own reader."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli_here
from nano_gpt.checkpoint import save_checkpoint
from nano_gpt.config import GPTConfig
from nano_gpt.model import GPT
from nano_gpt.tokenizer import EOT_TOKEN, VOCAB_SIZE, get_tokenizer

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (pip install 'nano-gpt[gguf]')")

N_LAYER = 2
# llama.cpp's gpt2 tensors (src/llama-model.cpp), each with a weight and a bias but the two embeddings and output.
EXPECTED_NAMES = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias", "output.weight",
                  *(f"blk.{i}.{t}.{kind}" for i in range(N_LAYER) for t in
                    ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down") for kind in ("weight", "bias"))}


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=N_LAYER, n_head=2, n_embd=64)).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm parameters, so a swapped or dropped one shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def checkpoint(model: GPT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_000010.bin"
    save_checkpoint(path, {"model": model.state_dict(), "model_config": model.config.to_dict(), "step": 10})
    return path


def _ours(model: GPT) -> dict[str, np.ndarray]:
    """Our parameters under llama.cpp's names, the vocabulary cut to GPT-2's tokens."""
    from nano_gpt.gguf_export import gguf_tensor_name

    return {gguf_tensor_name(k): (v[:VOCAB_SIZE] if k in ("transformer.wte.weight", "lm_head.weight") else v).numpy()
            for k, v in model.state_dict().items()}


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, str]]:
    """(name -> values as float32 in numpy's (out, in) layout, metadata key -> value, name -> GGML type)."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
               for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return tensors, fields, types


def test_export_writes_llama_cpps_gpt2_tensors_metadata_and_tokenizer(checkpoint: Path, model: GPT,
                                                                       tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    result = run_cli_here("export", f"--checkpoint={checkpoint}", "--format=gguf", f"--output={out}",
                          "--gguf-type=f32")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    tensors, fields, types = _read(out)
    assert set(tensors) == EXPECTED_NAMES
    for name, expected in _ours(model).items():
        assert tensors[name].shape == expected.shape, name
        np.testing.assert_array_equal(tensors[name], expected, err_msg=name)
    assert set(types.values()) == {"F32"}
    c = model.config
    assert fields["general.architecture"] == "gpt2"
    assert (fields["gpt2.context_length"], fields["gpt2.embedding_length"], fields["gpt2.feed_forward_length"],
            fields["gpt2.block_count"], fields["gpt2.attention.head_count"]) == (64, 64, 256, N_LAYER, 2)
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(c.layer_norm_epsilon)
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert fields["tokenizer.ggml.model"] == "gpt2"
    tokens = fields["tokenizer.ggml.tokens"]
    enc = get_tokenizer()
    assert len(tokens) == VOCAB_SIZE and tokens[EOT_TOKEN] == "<|endoftext|>"
    assert tokens[enc.encode_ordinary(" the")[0]] == "Ġthe"  # byte-level spelling: Ġ is the space
    assert fields["tokenizer.ggml.token_type"][EOT_TOKEN] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.merges"][0] == "Ġ t"
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == EOT_TOKEN


# f16 takes the same path as bf16 (a cast); each read-back parses GPT-2's 100k tokenizer strings, seconds apiece.
@pytest.mark.parametrize(("gguf_type", "matrix_type", "rtol"), [("bf16", "BF16", 8e-3), ("q8_0", "Q8_0", None)])
def test_smaller_types_hold_the_models_values_within_their_rounding(model: GPT, tmp_path: Path, gguf_type: str,
                                                                     matrix_type: str, rtol: float | None) -> None:
    from nano_gpt.gguf_export import export_gguf

    tensors, fields, types = _read(export_gguf(model, tmp_path / f"m-{gguf_type}.gguf", gguf_type))
    assert types["blk.0.ffn_up.weight"] == types["output.weight"] == matrix_type
    assert types["blk.0.ffn_up.bias"] == types["output_norm.weight"] == "F32"  # vectors stay exact
    for name, expected in _ours(model).items():
        got = tensors[name]
        if rtol is not None or types[name] == "F32":
            np.testing.assert_allclose(got, expected, rtol=rtol or 0, atol=1e-6, err_msg=name)
        else:  # q8_0: blocks of 32 values share a scale of max|w| / 127, stored in f16: half a step off at most,
            # plus the scale's own rounding (2**-11 of it) times up to 127 steps
            blocks = expected.reshape(-1, 32)
            step = np.abs(blocks).max(axis=1, keepdims=True) / 127
            assert (np.abs(got.reshape(-1, 32) - blocks) <= step * (0.5 + 127 * 2**-11) + 1e-7).all(), name


@pytest.mark.parametrize(("args", "fragments"), [
    (["--format=gguf"], ["--output"]),
    (["--output=model.gguf"], ["--output goes with --format=gguf"]),
    (["--format=gguf", "--output=model.gguf", "--gguf-type=q4_0"], ["--gguf-type", "q4_0"]),
    (["--format=gguf", "--output=.", ], ["--output"]),
])
def test_bad_gguf_options_are_a_one_line_error(checkpoint: Path, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run_cli_here("export", f"--checkpoint={checkpoint}", *args), *fragments)


def test_force_replaces_only_a_previous_gguf_file(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"someone's file")
    args = ("export", f"--checkpoint={checkpoint}", "--format=gguf", f"--output={out}")
    assert_one_line_error(run_cli_here(*args), "exists", "--force")
    assert_one_line_error(run_cli_here(*args, "--force"), "not a GGUF file", "only a previous GGUF export")
    assert out.read_bytes() == b"someone's file"
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # opened for reading it would block: refused without opening it
    assert_one_line_error(run_cli_here("export", f"--checkpoint={checkpoint}", "--format=gguf", f"--output={pipe}",
                                       "--force"), "not a regular file")
    pipe.unlink()
    out.write_bytes(b"GGUF" + bytes(64))  # a previous export, as far as its first bytes tell
    assert run_cli_here(*args, "--force").returncode == 0
    assert out.read_bytes()[:4] == b"GGUF" and out.stat().st_size > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temp file left beside it


def test_llama_cpp_computes_our_logits_from_the_export(model: GPT, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install "
                                                        "'nano-gpt[llama-cpp]'; it builds llama.cpp)")
    from nano_gpt.gguf_export import export_gguf

    path = export_gguf(model, tmp_path / "model.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    tokens = get_tokenizer().encode_ordinary("The king shall ride at dawn.")
    llm.eval(tokens)
    theirs = np.asarray(llm.scores[: len(tokens)])  # (T, V)
    with torch.no_grad():
        ours = model(torch.tensor([tokens]))[0][0, :, :VOCAB_SIZE].numpy()  # (T, V)
    np.testing.assert_allclose(theirs, ours, atol=1e-3, rtol=1e-3)
