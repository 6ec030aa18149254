import pytest
import torch

from nano_gpt import GPT, GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.model import PRESETS


@pytest.mark.parametrize(
    ("name", "shape", "millions"),
    [("gpt2", (12, 12, 768), 124.5), ("gpt2-medium", (24, 16, 1024), 354.9), ("gpt2-large", (36, 20, 1280), 774.1),
     ("gpt2-xl", (48, 25, 1600), 1557.7), ("gpt2-xs", (10, 8, 512), 57.8), ("gpt2-xxs", (4, 4, 64), 3.5)],
)
def test_presets_have_gpt2_shapes_and_parameter_counts(name: str, shape: tuple, millions: float) -> None:
    c = PRESETS[name]
    assert (c.n_layer, c.n_head, c.n_embd) == shape
    assert c.vocab_size == 50304 and c.block_size == 1024
    # Parameter count by formula (tied embeddings counted once), without building the big models.
    per_layer = 12 * c.n_embd**2 + 13 * c.n_embd
    n = c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_layer + 2 * c.n_embd
    assert n / 1e6 == pytest.approx(millions, abs=0.1)


def test_parameter_count_formula_matches_the_module() -> None:
    model = GPT(GPTConfig.from_preset("gpt2-xxs"))
    c = model.config
    assert model.num_parameters() == c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * (
        12 * c.n_embd**2 + 13 * c.n_embd) + 2 * c.n_embd


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


def test_loss_at_init_is_close_to_uniform() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1000, block_size=16))
    idx, targets = torch.randint(0, 1000, (2, 4, 16))
    logits, loss = model(idx, targets)
    assert logits is None  # the fused loss never builds them
    assert model(idx)[0].shape == (4, 16, 1000)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(1000.0)).item(), rel=0.05)


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
