import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from nano_gpt import GPT, GPTConfig, fused_loss
from nano_gpt.fused_loss import linear_cross_entropy


def inputs(n: int = 300, c: int = 32, v: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states (n, c) and a weight (v, c) that need gradients, and targets (n,) with every 7th ignored."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, c, generator=g).requires_grad_()
    weight = (0.3 * torch.randn(v, c, generator=g)).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::7] = -1
    return hidden, weight, targets


def plain(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-1)


@pytest.mark.parametrize("chunk_rows", [1, 64, 300, None])  # one row at a time, an uneven last chunk, one chunk
def test_loss_and_gradients_equal_the_plain_path_in_fp32(chunk_rows: int | None) -> None:
    hidden, weight, targets = inputs()
    expected = plain(hidden, weight, targets)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_ignored_targets_neither_count_in_the_mean_nor_get_gradients() -> None:
    hidden, weight, targets = inputs()
    kept = targets != -1
    loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=64)
    loss.backward()
    torch.testing.assert_close(loss, plain(hidden[kept], weight, targets[kept]))
    assert hidden.grad[~kept].abs().max() == 0 and hidden.grad[kept].abs().min() > 0


def test_a_scaled_loss_scales_the_gradients() -> None:  # gradient accumulation divides the loss
    hidden, weight, targets = inputs()
    (0.25 * linear_cross_entropy(hidden, weight, targets)).backward()
    expected = torch.autograd.grad(0.25 * plain(hidden, weight, targets), weight)[0]
    torch.testing.assert_close(weight.grad, expected, atol=1e-6, rtol=1e-5)


def test_every_target_ignored_gives_nan_loss_and_zero_gradients_as_plain_cross_entropy() -> None:
    hidden, weight, _ = inputs()
    loss = linear_cross_entropy(hidden, weight, torch.full((300,), -1))
    loss.backward()
    assert loss.isnan() and plain(hidden, weight, torch.full((300,), -1)).isnan()
    assert hidden.grad.abs().max() == 0 and weight.grad.abs().max() == 0


def test_under_bf16_autocast_it_follows_the_plain_autocast_path() -> None:
    hidden, weight, targets = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = plain(hidden, weight, targets)
        expected_grads = torch.autograd.grad(expected, (hidden, weight))
        loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=64)
        grads = torch.autograd.grad(loss, (hidden, weight))
    assert loss.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    torch.testing.assert_close(loss, expected, atol=0, rtol=1e-2)
    for got, want in zip(grads, expected_grads):  # bf16 matmuls: agreement to bf16's ~3 significant digits
        assert (got - want).norm() < 2e-2 * want.norm()


def test_without_gradients_it_only_computes_the_loss() -> None:
    hidden, weight, targets = inputs()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk_rows=64)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, plain(hidden, weight, targets).detach())


class LargestTensor(TorchDispatchMode):
    """The size in bytes of the largest tensor any op creates, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def test_the_model_loss_and_gradients_match_the_plain_path_without_building_the_logits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 2**16)  # 32 rows at this vocabulary; MAX_CHUNKS makes it 64
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=2000, block_size=64))
    idx, targets = torch.randint(0, 2000, (2, 8, 64))  # 512 rows x 2,000 columns: 4 MB of fp32 logits
    targets[0, :10] = -1
    with LargestTensor() as plain_largest:
        logits, _ = model(idx)
        expected_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        expected_loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    with LargestTensor() as largest:
        none, loss = model(idx, targets, return_logits=False)
        loss.backward()
    assert none is None
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-5, msg=name)
    logits_bytes = logits.numel() * logits.element_size()
    assert plain_largest.bytes >= logits_bytes  # the meter sees the logits where they exist
    assert largest.bytes <= logits_bytes / 4  # here the largest is the (V, C) weight gradient


def test_torch_compile_traces_it_into_one_graph_with_the_eager_results() -> None:
    # aot_eager runs Dynamo and AOTAutograd (what must trace the Function) without Inductor's slow codegen;
    # fullgraph=True makes any graph break an error.
    hidden, weight, targets = inputs(n=100, c=16, v=50)
    compiled = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    loss = compiled(hidden, weight, targets, chunk_rows=32)
    grads = torch.autograd.grad(loss, (hidden, weight))
    expected = linear_cross_entropy(hidden, weight, targets, chunk_rows=32)
    expected_grads = torch.autograd.grad(expected, (hidden, weight))
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


class CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.count += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm_.default)
        return func(*args, **(kwargs or {}))


def test_the_number_of_chunks_is_capped_so_compile_unrolls_a_bounded_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, targets = inputs(n=1000)
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 1000)  # one row per chunk, were it not for MAX_CHUNKS
    with CountMatmuls() as matmuls:
        linear_cross_entropy(hidden, weight, targets)
    assert matmuls.count == 3 * fused_loss.MAX_CHUNKS  # logits, hidden gradient, weight gradient per chunk


def test_a_second_backward_through_the_same_loss_is_refused_not_silently_rescaled() -> None:
    hidden, weight, targets = inputs()
    loss = linear_cross_entropy(hidden, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_without_gradients_only_the_logits_matmul_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    hidden, weight, targets = inputs(n=1000)
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 1000)
    with torch.no_grad(), CountMatmuls() as matmuls:
        linear_cross_entropy(hidden, weight, targets)
    assert matmuls.count == fused_loss.MAX_CHUNKS  # validation skips the two gradient matmuls of each chunk
