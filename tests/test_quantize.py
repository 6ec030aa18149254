"""Weight-only int8 (`nano_gpt.quantize`), the decode preparation (`for_inference`) and `--quantize` on the CLI."""

import copy
import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, run_cli_here
from nano_gpt.config import GPTConfig
from nano_gpt.data.prepare import prepare_dataset
from nano_gpt.generate import for_inference, generate
from nano_gpt.model import GPT
from nano_gpt.quantize import Int8Linear, quantize_int8

PROMPT = "Hello, I'm a language model,"


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=64)).eval()


def test_int8_linear_is_within_half_a_step_of_each_rows_scale() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    q = Int8Linear(linear.weight, linear.bias)
    assert q.weight.dtype == torch.int8 and q.scales.shape == (40,)
    dequantised = q.weight.float() * q.scales[:, None]
    assert (dequantised - linear.weight).abs().max() <= q.scales.max() / 2 + 1e-7
    x = torch.randn(3, 5, 96)
    torch.testing.assert_close(q(x), F.linear(x, dequantised, linear.bias), rtol=1e-5, atol=1e-5)


def test_quantized_logits_stay_close_to_fp32s(model: GPT) -> None:
    x = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        expected = model(x)[0]
        quantized = quantize_int8(copy.deepcopy(model))
        got = quantized(x)[0]
    assert (got - expected).abs().max() < 0.02 * expected.abs().max()
    assert isinstance(quantized.transformer.h[0].mlp.c_fc, Int8Linear) and isinstance(quantized.lm_head, Int8Linear)
    # The embedding keeps its precision (and its values), so caches get a float dtype.
    assert torch.equal(quantized.transformer.wte.weight, model.transformer.wte.weight)
    assert quantized.new_kv_caches(1, 8)[0].k.dtype == torch.float32


def test_bf16_decode_gives_the_greedy_tokens_of_the_uncached_path_and_int8_those_of_fp32(model: GPT) -> None:
    prompt = torch.randint(0, 512, (3, 8), generator=torch.Generator().manual_seed(1))
    bf16 = for_inference(copy.deepcopy(model), torch.bfloat16)
    assert bf16.transformer.wte.weight.dtype == torch.bfloat16 and not bf16.training
    cached = generate(bf16, prompt, 24, greedy=True, eos_token=None, vocab_size=512)
    assert cached == generate(bf16, prompt, 24, greedy=True, eos_token=None, vocab_size=512, use_cache=False)
    int8_bf16 = for_inference(copy.deepcopy(model), torch.bfloat16, quantize="int8")  # as `sample` runs it on a CPU
    assert int8_bf16.lm_head.scales.dtype == int8_bf16.new_kv_caches(1, 8)[0].k.dtype == torch.bfloat16
    assert len(generate(int8_bf16, prompt, 8, greedy=True, eos_token=None, vocab_size=512)[0]) == 16
    int8 = for_inference(copy.deepcopy(model), torch.float32, quantize="int8")
    assert generate(int8, prompt, 24, greedy=True, eos_token=None, vocab_size=512) == \
        generate(model, prompt, 24, greedy=True, eos_token=None, vocab_size=512)


def test_sample_with_int8_weights_prints_its_continuations(tiny_hf_gpt2_vocab_dir: Path) -> None:
    result = run_cli_here("sample", f"--pretrained={tiny_hf_gpt2_vocab_dir}", "--quantize=int8", "--greedy",
                          "--max-length=16", "--num-sequences=2", "--device=cpu", PROMPT)
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("> " + PROMPT)]) == 2


@pytest.mark.parametrize("command", ["sample", "eval", "serve"])
def test_an_unknown_quantization_is_a_one_line_error(command: str) -> None:
    assert_one_line_error(run_cli_here(command, "--quantize=int4"), "--quantize", "int4")


def test_int8_changes_the_validation_loss_by_under_one_percent(tmp_path: Path, tiny_hf_gpt2_vocab_dir: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The king shall ride at dawn. A horse, my lord! " * 300)
    prepare_dataset(str(corpus), dataset_dir=tmp_path / "ds", validation_tokens=1000, num_workers=1)
    losses = {}
    for quantize in ("none", "int8"):
        result = run_cli_here("eval", f"--pretrained={tiny_hf_gpt2_vocab_dir}", f"--dataset={corpus}",
                              f"--dataset-dir={tmp_path / 'ds'}", "--validation-steps=2", "--batch-size=2",
                              "--sequence-length=16", "--hellaswag-samples=0", "--json", "--dtype=fp32",
                              "--device=cpu", f"--quantize={quantize}")
        assert result.returncode == 0, result.stderr
        losses[quantize] = json.loads(result.stdout)["val_loss"]
    assert losses["int8"] != losses["none"]  # the weights did change
    assert abs(losses["int8"] - losses["none"]) <= 0.01 * losses["none"]


def test_the_server_decodes_int8_weights_as_generate_does(tiny_hf_gpt2_vocab_dir: Path) -> None:
    from nano_gpt.checkpoint import read_checkpoint
    from nano_gpt.serve.batcher import Batcher, Event, Job, Sampling

    loaded = read_checkpoint(str(tiny_hf_gpt2_vocab_dir))
    model, tokenizer = for_inference(loaded.model, torch.bfloat16, "int8"), loaded.tokenizer()  # as `serve` prepares it
    ids = tokenizer.encode_ordinary(PROMPT)
    batcher = Batcher(model, tokenizer, max_batch_size=2)
    events: list[Event] = []
    batcher.submit([Job(ids, 1, 6, Sampling(temperature=0), events.append)])
    batcher.start()
    try:
        deadline = time.monotonic() + 30
        while not (events and events[-1].done):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        batcher.stop()
    [row] = generate(model, torch.tensor([ids]), 6, greedy=True, vocab_size=tokenizer.n_vocab)
    assert "".join(e.deltas[0].text for e in events if e.deltas) == tokenizer.decode(row[len(ids):])
