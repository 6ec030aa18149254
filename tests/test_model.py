import dataclasses

import pytest
import torch

from nano_gpt import GPT, GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import PRESETS


# Parameter counts as published for OpenAI's GPT-2 (`transformers`' GPT2LMHeadModel, the tied embedding counted
# once), which has the unpadded 50,257-token vocabulary.
@pytest.mark.parametrize(("name", "shape", "published"), [
    ("gpt2", (12, 12, 768), 124_439_808), ("gpt2-medium", (24, 16, 1024), 354_823_168),
    ("gpt2-large", (36, 20, 1280), 774_030_080), ("gpt2-xl", (48, 25, 1600), 1_557_611_200),
])
def test_presets_build_models_with_gpt2s_published_parameter_counts(name: str, shape: tuple, published: int) -> None:
    c = PRESETS[name]
    assert (c.n_layer, c.n_head, c.n_embd) == shape
    assert c.vocab_size == 50304 and c.block_size == 1024
    with torch.device("meta"):  # shapes without memory: gpt2-xl would take 6 GB
        model = GPT(dataclasses.replace(c, vocab_size=50257))
    assert model.num_parameters() == published


@pytest.mark.parametrize(("name", "millions"), [("gpt2-xs", 58), ("gpt2-xxs", 3.5)])
def test_laptop_presets_have_the_sizes_the_readme_gives(name: str, millions: float) -> None:
    with torch.device("meta"):
        model = GPT(PRESETS[name])
    assert model.num_parameters() / 1e6 == pytest.approx(millions, abs=0.05 * millions)


def test_unknown_preset_is_a_user_error_listing_the_choices() -> None:
    with pytest.raises(NanoGPTError, match="gpt2-xxs"):
        GPTConfig.from_preset("gpt5")


def test_embeddings_are_tied_and_init_follows_gpt2() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=1000))
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_model_x_y_gives_logits_and_a_loss_near_uniform_at_init() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1000, block_size=16))
    idx, targets = torch.randint(0, 1000, (2, 4, 16))
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16, 1000)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(1000.0)).item(), rel=0.05)
    alone, no_loss = model(idx)
    assert no_loss is None and torch.equal(alone, logits)


def test_training_loss_without_logits_equals_the_loss_from_the_logits() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1000, block_size=16))
    idx, targets = torch.randint(0, 1000, (2, 4, 16))
    targets[0, :3] = -1  # ignored by both
    no_logits, fused = model(idx, targets, return_logits=False)
    assert no_logits is None
    torch.testing.assert_close(fused, model(idx, targets)[1], atol=1e-5, rtol=1e-5)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=16)).eval()
    idx = torch.randint(0, 100, (1, 10))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 100
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_kv_cache_chunks_give_the_same_logits_as_one_pass() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=100, block_size=32)).eval()
    idx = torch.randint(0, 100, (3, 12))
    full, _ = model(idx)
    caches = model.new_kv_caches(3, 12)
    parts = [model(idx[:, :5], caches=caches)[0], model(idx[:, 5:6], caches=caches, input_pos=5)[0],
             model(idx[:, 6:], caches=caches, input_pos=6)[0]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
