"""--optimizer=muon and --lr-schedule=wsd: which parameters Muon holds, what its step does, the schedules, and that
everything that holds for AdamW (resume after SIGKILL, DDP, fp16, checkpoints others read) holds for Muon."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_one_line_error, run_cli_here
from nano_gpt import GPT, GPTConfig
from nano_gpt.checkpoint import read_checkpoint
from nano_gpt.errors import NanoGPTError
from nano_gpt.model_card import facts_from_checkpoint, render_model_card
from nano_gpt.runtime import Runtime
from nano_gpt.train import TrainConfig, train
from nano_gpt.train.optim import lr_factor, make_optimizers
from nano_gpt.train.step import train_step
from test_train import _cli_args, _config, _initial_weights, _weights, sigkill_after

MUON = dict(optimizer="muon", lr_schedule="wsd")
STEPS = 4


def _tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16))


def _muon_config(**overrides: object) -> TrainConfig:
    return TrainConfig(**{**MUON, "max_steps": 10, "warmup_steps": 1, "max_lr": 1e-3, **overrides}).resolved()


@pytest.fixture(scope="module")
def muon_run(tinyshakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, list[float], Path]:
    """Four steps of the tiny model with Muon + WSD, two micro-batches each (as test_train's straight run)."""
    config = _config(tinyshakespeare_dir, tmp_path_factory.mktemp("muon"), **MUON, max_steps=STEPS,
                     validation_steps=0)
    result = train(config)
    return config, result.losses, result.checkpoint


def test_muon_holds_exactly_the_attention_and_mlp_matrices_and_adamw_the_rest() -> None:
    model = _tiny_model()
    adamw, muon = make_optimizers(model, _muon_config())
    names = {p: name for name, p in model.named_parameters()}
    muon_names = {names[p] for group in muon.param_groups for p in group["params"]}
    adamw_names = {names[p] for group in adamw.param_groups for p in group["params"]}
    assert muon_names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                          for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert adamw_names == set(names.values()) - muon_names  # embeddings (the tied head), biases, LayerNorm
    assert model.lm_head.weight is model.transformer.wte.weight and "transformer.wte.weight" in adamw_names
    [muon_group] = muon.param_groups
    assert muon_group["lr"] == pytest.approx(4e-3) and muon_group["adjust_lr_fn"] == "match_rms_adamw"


def test_a_fresh_muon_step_moves_hidden_matrices_by_an_orthogonalised_update() -> None:
    model = _tiny_model()
    config = _muon_config(muon_weight_decay=0.0)
    optimizers = make_optimizers(model, config)
    runtime = Runtime(torch.device("cpu"), torch.float32, "test")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = torch.randint(0, 64, (32, 16)), torch.randint(0, 64, (32, 16))
    train_step(model, optimizers, runtime.grad_scaler(), lambda: batch, runtime, grad_accum=1, grad_clip=1.0)
    for name in ("transformer.h.0.attn.c_proj.weight", "transformer.h.1.mlp.c_fc.weight"):
        param = model.get_parameter(name)
        update = torch.linalg.svdvals(before[name] - param.detach())
        update /= config.muon_lr * 0.2 * max(param.shape) ** 0.5  # match_rms_adamw's scale: 1 if orthogonal
        grad = torch.linalg.svdvals(param.grad)
        k = int((grad > 1e-2 * grad[0]).sum())  # the directions Newton-Schulz's five steps bring up to ~1
        assert grad[0] / grad[k - 1] > 10, "the gradient itself is already flat: the test proves nothing"
        assert k > min(param.shape) // 2 and ((update[:k] > 0.5) & (update[:k] < 1.5)).all(), (name, update)


def test_cosine_warms_up_linearly_then_decays_to_the_floor() -> None:
    c = TrainConfig(model="gpt2").resolved()  # 715 warmup steps of 19,073, floor 0.1
    assert lr_factor(0, c) == pytest.approx(1 / 715) and lr_factor(714, c) == pytest.approx(1.0)
    assert lr_factor(715 + (19_073 - 715) // 2, c) == pytest.approx(0.55, rel=1e-3)
    assert lr_factor(19_073, c) == pytest.approx(0.1) and lr_factor(30_000, c) == pytest.approx(0.1)
    factors = [lr_factor(s, c) for s in range(715, 19_073, 100)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))


def test_wsd_holds_the_peak_then_decays_linearly_over_the_decay_fraction() -> None:
    c = TrainConfig(max_steps=1000, warmup_steps=100, lr_schedule="wsd", decay_fraction=0.2,
                    min_lr_ratio=0.0).resolved()
    assert lr_factor(49, c) == pytest.approx(0.5)
    assert [lr_factor(s, c) for s in (100, 500, 800)] == [1.0, 1.0, 1.0]  # the plateau, to the decay's start
    assert lr_factor(900, c) == pytest.approx(0.5) and lr_factor(999, c) == pytest.approx(1 / 200)
    assert lr_factor(1000, c) == 0.0
    floored = dataclasses.replace(c, min_lr_ratio=0.1)
    assert lr_factor(900, floored) == pytest.approx(0.55) and lr_factor(5000, floored) == pytest.approx(0.1)


def test_muon_run_learns_and_its_checkpoint_log_and_card_say_so(muon_run: tuple) -> None:
    config, losses, checkpoint = muon_run
    assert len(losses) == STEPS and losses[-1] < losses[0] - 0.3
    state = torch.load(checkpoint, weights_only=True)
    buffers = [s["momentum_buffer"] for s in state["muon"]["state"].values()]
    assert len(buffers) == 4 * 4 and all(b.dim() == 2 and b.abs().sum() > 0 for b in buffers)
    [record] = [json.loads(line) for line in Path(config.checkpoint_dir, "train_log.jsonl").read_text().splitlines()
                if '"config"' in line]
    assert (record["config"]["optimizer"], record["config"]["lr_schedule"]) == ("muon", "wsd")
    read = read_checkpoint(checkpoint)  # what sample, eval and export read: the model, whatever trained it
    assert torch.equal(read.model.state_dict()["transformer.h.0.mlp.c_fc.weight"],
                       state["model"]["transformer.h.0.mlp.c_fc.weight"])
    card = render_model_card(facts_from_checkpoint(read), name="tiny")
    assert "| Optimizer | Muon on the attention and MLP matrices, AdamW on the rest |" in card
    assert "warmup-stable-decay: warmup, constant, then a linear decay over the last 30% of the steps" in card


def test_muon_resume_after_sigkill_matches_the_straight_run(muon_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = muon_run
    killed = dataclasses.replace(config, checkpoint_dir=str(tmp_path), checkpoint_steps=1)
    sigkill_after(killed, "checkpoint_000001.bin")
    resumed = train(dataclasses.replace(killed, resume="auto"))
    assert resumed.losses == losses[-len(resumed.losses):]  # bit-identical
    final, straight = torch.load(resumed.checkpoint, weights_only=True), torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(final["model"][k], v) for k, v in straight["model"].items())
    assert all(torch.equal(final["muon"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
               for i, s in straight["muon"]["state"].items())


def test_ddp_with_muon_matches_one_process_with_twice_the_accumulation(muon_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = muon_run  # one process: 2 accumulation steps; under torchrun: 1 on each of 2
    nano_gpt = Path(sys.executable).parent / "nano-gpt"
    ddp = dataclasses.replace(config, checkpoint_dir=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(nano_gpt), *_cli_args(ddp)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in records if r["kind"] == "config"] == [2]
    assert [r["loss"] for r in records if r["kind"] == "train"] == pytest.approx(losses, abs=1e-4)
    # Newton-Schulz runs in bf16 and lifts even the gradient's near-null directions to ~1, so gloo summing in
    # another order than accumulation moves the hidden matrices a few percent of their training apart (as one
    # batch of 8 against two of 4 does): the losses agree to 1e-4. Unsynchronised ranks would be ~100% apart.
    final, single, initial = _weights(tmp_path / checkpoint.name), _weights(checkpoint), _initial_weights()
    for name, weight in single.items():
        assert (final[name] - weight).norm() < 0.1 * (weight - initial[name]).norm(), name


class _TwoKinds(nn.Module):
    """A Muon matrix and an AdamW vector; only the vector's gradient overflows in fp16."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({"h": nn.Linear(4, 4, bias=False)})
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor, return_logits: bool = True) -> tuple[None, torch.Tensor]:
        return None, self.transformer["h"](x).sum() + (self.gain * 1e30 * x).sum()


def test_with_fp16_an_overflow_in_one_optimizer_skips_both_updates() -> None:
    model = _TwoKinds()
    optimizers = make_optimizers(model, _muon_config())
    assert [len(o.param_groups[0]["params"]) for o in optimizers] == [0, 1]  # the gain is AdamW's, h is Muon's
    runtime = Runtime(torch.device("cpu"), torch.float16, "test")
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, optimizers, runtime.grad_scaler(), lambda: (torch.ones(4), torch.ones(4)), runtime,
                        grad_accum=1, grad_clip=1.0)
    assert result.skipped and all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("optimizer", "sgd", "unknown --optimizer=sgd"), ("lr_schedule", "linear", "unknown --lr-schedule=linear"),
    ("decay_fraction", 0.0, "--decay-fraction=0.0"), ("muon_momentum", 1.0, "--muon-momentum=1.0"),
    ("muon_lr", -1.0, "--muon-lr=-1.0"), ("muon_weight_decay", float("nan"), "--muon-weight-decay=nan"),
])
def test_bad_optimizer_settings_are_user_errors(field: str, value: object, match: str) -> None:
    with pytest.raises(NanoGPTError, match=match):
        TrainConfig(**{"max_steps": 50, field: value}).resolved()


def test_muon_under_fsdp_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = run_cli_here("train", "--optimizer=muon", "--parallelism=fsdp", f"--checkpoint-dir={tmp_path}")
    assert_one_line_error(result, "--optimizer=muon", "--parallelism=fsdp", "whole matrices")
    assert not any(tmp_path.iterdir())


def test_muon_on_a_torch_without_it_names_the_version_needed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delattr(torch.optim, "Muon")
    result = run_cli_here("train", "--optimizer=muon", f"--checkpoint-dir={tmp_path}")
    assert_one_line_error(result, "--optimizer=muon needs torch >= 2.9")
    assert not any(tmp_path.iterdir())


def test_resuming_with_another_optimizer_is_refused(muon_run: tuple, tmp_path: Path) -> None:
    config, _, checkpoint = muon_run
    result = run_cli_here(*_cli_args(dataclasses.replace(config, checkpoint_dir=str(tmp_path), optimizer="adamw",
                                                         resume=str(checkpoint))))
    assert_one_line_error(result, "was trained with --optimizer=muon", "--pretrained")


def test_a_muon_checkpoint_fine_tunes_with_adamw_from_where_it_stopped(muon_run: tuple, tmp_path: Path) -> None:
    config, losses, checkpoint = muon_run
    tuned = train(dataclasses.replace(config, checkpoint_dir=str(tmp_path), pretrained=str(checkpoint),
                                      optimizer="adamw", lr_schedule="cosine", max_steps=2, warmup_steps=1))
    assert tuned.losses[0] < losses[0] - 0.3  # the trained weights, not a fresh init
