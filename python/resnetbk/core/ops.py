"""The BK-Core as real ``torch.library`` custom ops: ``resnetbk::bk_core`` and its backward.

The ops take inputs that already share one batch shape (``api.bk_core`` validates and
broadcasts), a resolved backend name from ``backends.REGISTRY`` (``"rust"``: CPU, the Rust
kernels; ``"torch"``, ``"torch_sweep"``, ``"torch_scan"``: pure torch on any device) and an
optional read-out ``mask`` (see ``backends``).

Both ops have fake (meta) implementations for ``torch.compile``, FLOP formulas for
``FlopCounterMode``, and the forward op's autograd formula is the exact backward op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import backends
from .backends import couplings
from .flops import backward_flops, forward_flops

OP_BACKENDS = backends.NAMES

__all__ = ["OP_BACKENDS", "bk_core_backward_op", "bk_core_op", "couplings"]


@torch.library.custom_op("resnetbk::bk_core", mutates_args=())
def bk_core_op(diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str, backend: str,
               mask: Optional[Tensor] = None) -> Tensor:
    """Forward: the resolvent diagonal, complex, of shape ``diag.shape`` (0 where ``mask`` is false)."""
    return backends.get(backend, diag.device).forward(diag, upper, lower, z, mode, mask)


@bk_core_op.register_fake
def _bk_core_fake(diag, upper, lower, z, mode, backend, mask=None):
    return diag.new_empty(diag.shape, dtype=z.dtype)


@torch.library.custom_op("resnetbk::bk_core_backward", mutates_args=())
def bk_core_backward_op(
    grad: Tensor, diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str, backend: str,
    mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact VJP: ``(grad_diag, grad_upper, grad_lower, grad_z)``; grad_lower is empty when lower is None."""
    grad_diag, grad_upper, grad_lower, grad_z = backends.get(backend, diag.device).backward(
        grad, diag, upper, lower, z, mode, mask
    )
    return grad_diag, grad_upper, (upper.new_empty(0) if grad_lower is None else grad_lower), grad_z


@bk_core_backward_op.register_fake
def _bk_core_backward_fake(grad, diag, upper, lower, z, mode, backend, mask=None):
    grad_lower = upper.new_empty(0) if lower is None else torch.empty_like(lower)
    return torch.empty_like(diag), torch.empty_like(upper), grad_lower, torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    diag, upper, lower, z, mode, backend, mask = inputs
    ctx.save_for_backward(diag, upper, lower, z, mask)
    ctx.mode, ctx.backend = mode, backend


def _backward(ctx, grad):
    diag, upper, lower, z, mask = ctx.saved_tensors
    grad_diag, grad_upper, grad_lower, grad_z = bk_core_backward_op(grad, diag, upper, lower, z, ctx.mode,
                                                                    ctx.backend, mask)
    return grad_diag, grad_upper, (None if lower is None else grad_lower), grad_z, None, None, None


bk_core_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.resnetbk.bk_core)
def _bk_core_flops(diag_shape, upper_shape, lower_shape, z_shape, mode, backend, mask_shape=None, out_shape=None,
                   **kwargs) -> int:
    return forward_flops(diag_shape, mode)


@register_flop_formula(torch.ops.resnetbk.bk_core_backward)
def _bk_core_backward_flops(grad_shape, diag_shape, upper_shape, lower_shape, z_shape, mode, backend,
                            mask_shape=None, out_shape=None, **kwargs) -> int:
    return backward_flops(diag_shape, mode)
