"""The LM head and the cross-entropy fused and chunked over rows, so the (B*T, V) logits never exist at once.

At GPT-2's vocabulary the logits dominate a training step's memory: 2,048 tokens x 50,304 columns is
412 MB in fp32, held as logits, log-softmax output and their gradients (3.3 GB each for gpt2 at micro batch
16 x 1024). Here each chunk of rows is projected, its loss summed, and, while its logits are still in
cache, their gradient (softmax minus one-hot) multiplied into the gradients of the hidden states and of
the weight; the next chunk reuses the memory. The backward pass then only scales the stored gradients,
so the matmul work is the same as the plain path's (one forward, two backward), with no recomputation.
Plain torch: it runs on CPU, CUDA and MPS, under autocast, and inside `torch.compile`.
"""

import torch

CHUNK_ELEMENTS = 2**22  # logits per chunk (16 MiB in fp32) where MAX_CHUNKS allows: 83 rows at GPT-2's vocabulary
# torch.compile unrolls the chunk loop, and its compile time grows with the number of chunks: at most this many.
MAX_CHUNKS = 8


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, skipping `ignore_index` targets."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, hidden: torch.Tensor, weight: torch.Tensor,
                targets: torch.Tensor, compute_dtype: torch.dtype, chunk_rows: int, ignore_index: int,
                grad_enabled: bool) -> torch.Tensor:
        # hidden (N, C), weight (V, C), targets (N,). Forward runs with grad mode off, so the caller's mode comes in
        # `grad_enabled`: validation (no_grad) skips the gradient matmuls, two thirds of the work.
        need_hidden, need_weight = (grad_enabled and ctx.needs_input_grad[0]), (grad_enabled and ctx.needs_input_grad[1])
        N = hidden.shape[0]
        w = weight.to(compute_dtype)  # (V, C); a no-op when it already is
        valid = targets != ignore_index  # (N,)
        safe_targets = torch.where(valid, targets, 0)  # any real column: their terms are masked out
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for start in range(0, N, chunk_rows):
            end = min(start + chunk_rows, N)
            h = hidden[start:end].to(compute_dtype)  # (n, C)
            t, v = safe_targets[start:end], valid[start:end, None]  # (n,), (n, 1)
            logits = (h @ w.t()).float()  # (n, V); the softmax over 50k columns wants fp32
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
            loss_sum = loss_sum + torch.where(v, lse - logits.gather(1, t[:, None]), 0.0).sum()
            if need_hidden or need_weight:
                # d(sum of row losses)/d(logits) = softmax - one_hot(target), in fp32, then in the compute dtype.
                # Unscaled (entries in [-1, 1]) so that even fp16 keeps them; 1/count is applied in fp32 below.
                if torch.compiler.is_compiling():  # one fused pass over the chunk: exp, one-hot, cast
                    one_hot = torch.arange(logits.shape[1], device=logits.device) == t[:, None]  # (n, V)
                    grad = ((logits - lse).exp() - one_hot.float()).to(compute_dtype)
                else:  # eager: in place over the logits; the one-hot part touches one entry a row
                    grad = logits.sub_(lse).exp_().scatter_add_(1, t[:, None], torch.full_like(lse, -1.0))
                    grad = grad.to(compute_dtype)  # (n, V)
                # Ignored rows are zeroed through the (n, C) operands, not through the (n, V) gradient.
                if need_hidden:
                    grad_hidden[start:end] = (grad @ w).float() * v  # (n, C)
                if need_weight:
                    masked = h * v  # (n, C)
                    if compute_dtype == torch.float32:
                        grad_weight.addmm_(grad.t(), masked)  # (V, C), accumulated inside the matmul
                    else:
                        grad_weight += grad.t() @ masked
        count = valid.sum()
        loss = loss_sum / count  # NaN when every target is ignored, as F.cross_entropy gives
        scale = 1.0 / count.clamp(min=1).float()  # no targets: zero gradients, as F.cross_entropy gives
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.save_for_backward(None if grad_hidden is None else grad_hidden.mul_(scale),
                              None if grad_weight is None else grad_weight.mul_(scale))
        return loss

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor) -> tuple:
        # Scaled in place: a (V, C) copy would be the largest tensor of the step. A second backward through
        # the same graph (retain_graph) is refused by autograd's check of the saved tensors' versions.
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_loss).to(ctx.hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """`F.cross_entropy(hidden @ weight.T, targets, ignore_index=ignore_index)` (mean over the targets kept)
    without materialising the logits: hidden (N, C), weight (V, C), targets (N,).

    Under autocast the matmuls run in the autocast dtype, like `nn.Linear`'s; the softmax and the gradient
    sums are fp32. `chunk_rows` defaults to CHUNK_ELEMENTS // V rows, or N / MAX_CHUNKS if that is more.
    """
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0], -(-hidden.shape[0] // MAX_CHUNKS))
    with torch.autocast(device_type, enabled=False):  # the function picks its dtypes itself
        return LinearCrossEntropy.apply(hidden, weight, targets, dtype, rows, ignore_index, torch.is_grad_enabled())
