"""Hand-written kernels the model calls, each beside the plain PyTorch it must equal (tests/test_model.py).

- rotary_qkv / RotaryQKV: RoPE on the fused q/k/v projection; the autograd Function writes each
  gradient once instead of gluing halves together with copies (+5-9 % a training step).
- swiglu / SwiGLU: silu(gate) * up; the same for its backward.
- Linear: nn.Linear whose one-row products (batch-1 decoding) are split over PyTorch's threads;
  otherwise F.linear.
- LinearCrossEntropy: the summed cross-entropy of the output head, chunked; equals
  F.cross_entropy(x @ weight.T, targets, ignore_index=-100, reduction="sum") (GPTMini.loss).

Under autocast (bf16/fp16 training) each computes in the dtype autocast gives the plain version, on any
device: what torch.amp.custom_fwd/custom_bwd do for one device type given in advance. RoPE and SwiGLU
work in their input's dtype (the projection's, autocast's) as the plain ops do; the head's matmuls,
forward and backward, take autocast's dtype, read from the input's device (compute_dtype), the softmax
and the loss fp32. Their backwards run on tensors whose dtypes forward fixed, so autocast's state
there does not matter. tests/test_model.py checks each against its plain version under bf16 autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # targets with this value (prompt, padding) count for nothing


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast gives a matmul of `x` on its device; x's own dtype outside autocast."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """RoPE in the rotate-half layout (Llama's): each pair (x1, x2) of the two halves of a head
    turns by its angle, (x1 cos - x2 sin, x2 cos + x1 sin), written into `out` half by half."""
    x1, x2 = x.chunk(2, dim=-1)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin)
    return out


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int, n_kv_heads: int):
    """q, k, v (B, T, heads, head_dim) from the fused qkv projection, q and k rotated.

    Under torch.compile (the decode step) the rotation is the plain formula, which inductor fuses into
    one loop (and which it can trace: it refuses `out=` views)."""
    qk, v = qkv.split((n_heads + n_kv_heads, n_kv_heads), dim=2)
    if torch.compiler.is_compiling():
        x1, x2 = qk.chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    else:
        rotated = rotate(qk, cos, sin, qk.new_empty(qk.shape))
    q, k = rotated.split((n_heads, n_kv_heads), dim=2)
    return q, k, v


class RotaryQKV(torch.autograd.Function):
    """rotary_qkv with a hand-written backward, for training.

    Autograd's version of the same few lines (chunk, neg, cat, two muls, an add, then the splits'
    backward) copies q and k about seven times per layer and direction; this writes each once.
    The backward is the inverse rotation (sin -> -sin), written straight into one gradient buffer
    for the fused projection.
    """

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_heads: int, n_kv_heads: int):
        ctx.save_for_backward(cos, sin)
        ctx.sizes, ctx.dtype = (n_heads, n_kv_heads, n_kv_heads), qkv.dtype
        q, k, v = rotary_qkv(qkv, cos, sin, n_heads, n_kv_heads)
        return q, k, v.clone()  # v is a view of the input: autograd wants outputs of their own

    @staticmethod
    def backward(ctx, grad_q, grad_k, grad_v):
        cos, sin = ctx.saved_tensors
        grad = grad_q.new_empty(*grad_q.shape[:2], sum(ctx.sizes), grad_q.shape[-1], dtype=ctx.dtype)
        into_q, into_k, into_v = grad.split(ctx.sizes, dim=2)
        rotate(grad_q, cos, -sin, into_q), rotate(grad_k, cos, -sin, into_k), into_v.copy_(grad_v)
        return grad, None, None, None, None


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class SwiGLU(torch.autograd.Function):
    """swiglu for training: the backward writes gate_up's gradient into one buffer instead of two
    halves that autograd would then copy together."""

    @staticmethod
    def forward(ctx, gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        silu_gate = F.silu(gate)
        ctx.save_for_backward(gate_up, silu_gate)
        return silu_gate * up

    @staticmethod
    def backward(ctx, grad):
        gate_up, silu_gate = ctx.saved_tensors
        grad = grad.to(gate_up.dtype)  # silu_backward takes one dtype; a caller's fp32 gradient meets bf16 here
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, silu_gate, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


SPLIT_ROWS = 128


class Linear(nn.Linear):
    """A bias-free nn.Linear (the Llama block has none) with faster paths for the few-row products of
    decoding.

    Decoding streams every weight from memory for a handful of FLOPs a row, and PyTorch runs such a
    product on one core. With the weight stored (in, out) (GPTMini.use_decode_layout) it splits into
    one block per thread, as a batched matmul that PyTorch spreads over its threads: a one-row product
    along `in` (contiguous row blocks, then a sum of the partial results), a product of a few rows (a
    batch of requests, a short prompt) along `out` (a column block each, no sum). Measured on 2 cores,
    the weights cold as in a step: one row 1.2 ms a token against 1.9 ms; 8 rows 2.2-2.5 ms against
    3.9 ms; still ahead at 128 rows, behind at 512 (so F.linear above SPLIT_ROWS rows).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_in, n_out = self.weight.shape[1], self.weight.shape[0]
        rows = x.numel() // n_in
        parts = math.gcd(threads(), n_in if rows == 1 else n_out)
        if parts < 2 or rows > SPLIT_ROWS or not self.weight.t().is_contiguous():
            return F.linear(x, self.weight)
        if rows == 1:
            blocks, weight = x.reshape(parts, 1, n_in // parts), self.weight.t().view(parts, n_in // parts, -1)
            return _bmm(blocks, weight).sum(0).view(*x.shape[:-1], -1)
        columns = self.weight.t().view(n_in, parts, n_out // parts).transpose(0, 1)
        y = _bmm(x.reshape(1, rows, n_in).expand(parts, rows, n_in), columns)
        return y.transpose(0, 1).reshape(*x.shape[:-1], n_out)


def _bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():  # inductor writes a bmm of few rows as its own slower loop; baddbmm stays MKL's
        return torch.baddbmm(a.new_zeros(1, 1, 1), a, b, beta=0)
    return torch.bmm(a, b)


def threads() -> int:
    """PyTorch's thread count, a constant to torch.compile once `prepare_compile` ran."""
    return torch.get_num_threads()


def prepare_compile() -> None:
    """Marks `threads` constant to torch.compile (the compiled decode step keeps its split). Called
    before compiling, not at import: the mark imports dynamo, seconds of every command's start."""
    torch.compiler.assume_constant_result(threads)


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `x @ weight.T` without materialising all logits or their gradient.

    Works through the rows in chunks: each chunk's logits, loss, and gradient (softmax - one-hot)
    are computed together while they are hot in cache, then folded into the input and weight
    gradients. Same matmuls as the plain path, but no full-size log-softmax backward pass nor the
    zero-filled (tokens x vocab) gradient buffer, which dominate the head's cost on a CPU.
    """

    @staticmethod
    def forward(ctx, x, weight, targets, chunk: int = 1024):
        dtype = compute_dtype(x)
        cast, w = x.to(dtype), weight.to(dtype)  # once, not once a chunk as autocast would
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x, grad_w = torch.empty_like(x), torch.zeros_like(weight, dtype=torch.float32)
        for start in range(0, x.shape[0], chunk):
            xs, ts = cast[start:start + chunk], targets[start:start + chunk]
            logits = (xs @ w.t()).float()
            valid = ts != IGNORE_INDEX
            safe = ts.clamp(min=0)
            target_logit = logits.gather(1, safe[:, None]).squeeze(1)
            peak = logits.amax(dim=-1, keepdim=True)
            grad = logits.sub_(peak).exp_()  # reuses the logits buffer: exp(logit - max)
            norm = grad.sum(dim=-1)
            total += ((peak.squeeze(1) + norm.log() - target_logit) * valid).sum()
            grad.mul_((valid / norm)[:, None])  # softmax on counted rows, zero elsewhere
            grad[torch.arange(len(ts), device=x.device), safe] -= valid.float()
            grad_x[start:start + chunk] = grad.to(dtype) @ w
            if dtype == torch.float32:
                grad_w.addmm_(grad.t(), xs)
            else:  # the product in autocast's dtype, summed over the chunks in fp32
                grad_w += grad.t().to(dtype) @ xs
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_output, grad_w * grad_output, None, None
