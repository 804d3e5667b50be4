"""Causal self-attention with dropout, as one Rust kernel on a float32 CPU (``step_kernels::attention``).

Training the Transformer on a CPU, torch's math path (scores, mask, softmax, dropout, values and
their backwards: ``transformer.causal_attention_with_dropout``, the reference this is tested
against) makes eight passes over a ``(batch, heads, N, N)`` tensor per layer and saves two of
them. The kernel takes the fused projection's output as it is (``(batch, N, 3 * d_model)``),
computes each (batch, head) pair's tile of scores in the L2 cache, writes the output already in
the layout the output projection reads, and its backward recomputes the probabilities from the
saved log-sum-exp (FlashAttention's recomputation, Dao et al. 2022). Its dropout masks are
``models.dropout``'s for the probabilities as one contiguous tensor, from one seed drawn the same
way: with the same generator state both paths drop the same elements and agree to rounding.

Measured at the benchmark's shape (batch 32, N 128, d_model 64, 4 heads; 2-core Sapphire
Rapids): see ``docs/performance.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _native
from . import dropout as dropout_module

#: Whether training attention on float32 CPU tensors runs the kernel; False runs the torch ops.
use_kernel = True


def kernel_applies(qkv: Tensor) -> bool:
    """Whether ``causal_attention`` of ``qkv`` may run (else the torch ops): float32 on a CPU, no
    dispatch mode (the FLOPs tracer prices the torch ops), and the dropout kernel's masks on."""
    return use_kernel and dropout_module.kernel_applies(qkv)


def causal_attention(qkv: Tensor, n_heads: int, p: float) -> Tensor:
    """Causal multi-head attention of the fused projection ``qkv`` (``(batch, N, 3 * d)``: query,
    key and value, each ``n_heads`` heads of ``d // n_heads``) with dropout ``p`` on its
    probabilities: ``(batch, N, d)``, the heads side by side (the output projection's input)."""
    if qkv.dtype != torch.float32 or qkv.device.type != "cpu":
        raise ValueError(f"qkv: the kernel takes float32 on the CPU, got {qkv.dtype} on {qkv.device} "
                         "(use transformer.causal_attention_with_dropout or scaled_dot_product_attention)")
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * n_heads):
        raise ValueError(f"qkv: expected (batch, N, 3 * n_heads * head_dim) with n_heads = {n_heads}, "
                         f"got shape {tuple(qkv.shape)}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"p: expected a dropout probability in [0, 1), got {p}")
    return _CausalAttention.apply(qkv, n_heads, 1.0 - p, dropout_module.draw_seed() if p > 0 else 0)


def _shape(qkv: Tensor, n_heads: int) -> tuple:
    batch, n, three_d = qkv.shape
    return batch, n, n_heads, three_d // (3 * n_heads)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, n_heads, keep, seed):
        qkv = qkv.detach().contiguous()
        batch, n, heads, head_dim = shape = _shape(qkv, n_heads)
        out = torch.empty(batch, n, heads * head_dim, dtype=qkv.dtype)
        lse = torch.empty(batch, heads, n, dtype=qkv.dtype)
        scale = 1.0 / math.sqrt(head_dim)
        _native.causal_attention_forward_f32(qkv.view(-1).numpy(), out.view(-1).numpy(), lse.view(-1).numpy(),
                                             *shape, scale, keep, seed, torch.get_num_threads())
        ctx.save_for_backward(qkv, lse)
        ctx.shape, ctx.scale, ctx.keep, ctx.seed = shape, scale, keep, seed
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        qkv, lse = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_qkv = torch.empty_like(qkv)
        _native.causal_attention_backward_f32(qkv.view(-1).numpy(), grad_out.view(-1).numpy(), lse.view(-1).numpy(),
                                              grad_qkv.view(-1).numpy(), *ctx.shape, ctx.scale, ctx.keep, ctx.seed,
                                              torch.get_num_threads())
        return grad_qkv, None, None, None
