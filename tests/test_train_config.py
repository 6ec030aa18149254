"""Training maths that needs no data: schedule, accumulation, presets, FLOPs."""


import pytest
import torch

from nano_gpt import GPT, PRESETS, GPTConfig
from nano_gpt.errors import NanoGPTError
from nano_gpt.train import RECIPES, TrainConfig
from nano_gpt.train.metrics import flops_per_token, step_line
from nano_gpt.train.optim import make_optimizer


def test_every_model_resolves_to_a_schedule_it_can_run() -> None:
    assert set(RECIPES) == set(PRESETS)  # every --model has a recipe
    for name, preset in PRESETS.items():
        c = TrainConfig(model=name, micro_batch_size=1, sequence_length=preset.block_size).resolved()
        assert 0 < c.warmup_steps < c.max_steps and c.max_lr > 0, name
        assert c.grad_accum_steps(world_size=1) >= 1, name  # whole micro-batches of the model's context


def test_gpt2s_recipe_is_gpt3_smalls_on_build_nanogpts_token_budget() -> None:
    # GPT-3 paper, table 2.1 and section B, for the 124M shape: 0.5M-token batches, learning rate 6e-4, warmup
    # over 375M tokens; build-nanogpt trains it on 10B tokens.
    c = TrainConfig(model="gpt2").resolved()
    assert c.total_batch_size == 2**19 and c.max_lr == 6e-4
    assert c.warmup_steps * c.total_batch_size == pytest.approx(375e6, rel=0.001)
    assert c.max_steps * c.total_batch_size == pytest.approx(10e9, rel=0.001)


def test_larger_models_train_with_smaller_learning_rates() -> None:
    lrs = [TrainConfig(model=name).resolved().max_lr for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == len(lrs)


def test_flags_win_over_the_recipe_and_the_rest_comes_from_it() -> None:
    recipe = TrainConfig(model="gpt2-xs").resolved()
    c = TrainConfig(model="gpt2-xs", max_lr=1e-2, max_steps=2 * recipe.max_steps).resolved()
    assert (c.max_lr, c.max_steps) == (1e-2, 2 * recipe.max_steps)
    assert (c.total_batch_size, c.warmup_steps) == (recipe.total_batch_size, recipe.warmup_steps)
    other = TrainConfig(model="gpt2").resolved()
    assert (other.total_batch_size, other.max_lr) != (recipe.total_batch_size, recipe.max_lr)  # each model its own


def test_gradient_accumulation_fills_the_total_batch() -> None:
    c = TrainConfig(total_batch_size=524_288, micro_batch_size=16, sequence_length=1024).resolved()
    assert c.grad_accum_steps(world_size=1) == 32
    assert c.grad_accum_steps(world_size=8) == 4
    with pytest.raises(NanoGPTError, match="not divisible"):
        c.grad_accum_steps(world_size=3)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("model", "gpt5", "unknown model"), ("dtype", "float8", "unknown --dtype"), ("micro_batch_size", 0, "positive"),
    ("warmup_steps", 50, "smaller than --max-steps"), ("max_steps", 0, "--max-steps=0 must be a positive"),
    ("max_lr", 0.0, "--max-lr=0.0 must be a positive number"), ("hellaswag_samples", -1, "must be zero or more"),
    ("max_lr", float("nan"), "--max-lr=nan must be a positive"), ("grad_clip", -1.0, "--grad-clip=-1.0 must be"),
    ("grad_clip", float("inf"), "--grad-clip=inf"), ("min_lr_ratio", 1.5, "--min-lr-ratio"),
    ("min_lr_ratio", float("nan"), "--min-lr-ratio"), ("weight_decay", -0.1, "--weight-decay"),
    ("seed", -1, "--seed"), ("seed", 2**64, "--seed"), ("stop_at_step", -1, "--stop-at-step"),
])
def test_bad_settings_are_user_errors(field: str, value: object, match: str) -> None:
    # An explicit 0 is refused, never silently replaced by the preset's value.
    with pytest.raises(NanoGPTError, match=match):
        TrainConfig(**{"max_steps": 50, field: value}).resolved()


def test_weight_decay_applies_to_matrices_only() -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=64, block_size=8))
    decayed, plain = make_optimizer(model.parameters(), 1e-3, 0.1).param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_flops_per_token_matches_a_count_of_the_matmuls() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    config = GPTConfig(n_layer=2, n_head=4, n_embd=128, vocab_size=512, block_size=64)
    model = GPT(config)
    x = torch.randint(0, config.vocab_size, (2, config.block_size))
    # The math backend spells attention out as matmuls, which the counter sees (fused kernels it may not).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        # The plain LM head + cross-entropy: the fused loss does the same matmuls, partly in place, where the
        # counter does not see them.
        logits, _ = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    per_token = counter.get_total_flops() / x.numel()
    # 6N counts biases and LayerNorm gains as if they were matmul weights: a fraction of a percent here.
    estimate = flops_per_token(config, model.num_parameters(exclude_embeddings=True), config.block_size)
    assert estimate == pytest.approx(per_token, rel=0.01)


def test_step_line_has_the_seed_format() -> None:
    line = step_line(0, 10.99634, 15.34211, 100.0, 5242.88, 6e-4 / 715, None)
    assert line == "step: 0 | loss: 10.9963 | norm: 15.3421 | dt: 100.00ms | tok/sec: 5242.88 | lr: 0.000001"
    assert step_line(1, 1, 1, 1, 1, 1, 0.4567).endswith("| mfu: 45.67%")
