"""The BK-Core as real ``torch.library`` custom ops: ``resnetbk::bk_core`` and its backward.

The ops take inputs that already share one batch shape (``api.bk_core`` validates and
broadcasts) and a resolved backend name:

* ``"rust"``: CPU tensors, the Rust kernels;
* ``"torch"``, ``"torch_sweep"``, ``"torch_scan"``: pure torch on any device (``"torch"`` picks
  sweep or scan by size and device; the other two force one, for tests and benchmarks).

Both ops have fake (meta) implementations for ``torch.compile``, FLOP formulas for
``FlopCounterMode``, and the forward op's autograd formula is the exact backward op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import rust_backend, torch_backend
from .flops import backward_flops, forward_flops

OP_BACKENDS = ("rust", "torch", "torch_sweep", "torch_scan")


def couplings(upper: Tensor, lower: Optional[Tensor]) -> Tensor:
    """``kap_k = b_k c_k``: the resolvent diagonal sees the off-diagonals only through it."""
    return upper * upper if lower is None else upper * lower


def _torch_method(backend: str) -> str:
    return {"torch": "auto", "torch_sweep": "sweep", "torch_scan": "scan"}[backend]


def _check_backend(backend: str, device: torch.device) -> None:
    if backend not in OP_BACKENDS:
        raise ValueError(f"backend: expected one of {OP_BACKENDS}, got {backend!r}")
    if backend == "rust" and device.type != "cpu":
        raise ValueError(f"backend='rust' runs on CPU tensors only, got a tensor on {device}; use backend='torch'")


@torch.library.custom_op("resnetbk::bk_core", mutates_args=())
def bk_core_op(diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str, backend: str) -> Tensor:
    """Forward: the resolvent diagonal, complex, of shape ``diag.shape``."""
    _check_backend(backend, diag.device)
    if backend == "rust":
        return rust_backend.forward(diag, upper, lower, z, mode)
    return torch_backend.forward(diag, couplings(upper, lower), z, mode, _torch_method(backend))


@bk_core_op.register_fake
def _bk_core_fake(diag, upper, lower, z, mode, backend):
    return diag.new_empty(diag.shape, dtype=z.dtype)


@torch.library.custom_op("resnetbk::bk_core_backward", mutates_args=())
def bk_core_backward_op(
    grad: Tensor, diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact VJP: ``(grad_diag, grad_upper, grad_lower, grad_z)``; grad_lower is empty when lower is None."""
    _check_backend(backend, diag.device)
    if backend == "rust":
        grad_diag, grad_upper, grad_lower, grad_z = rust_backend.backward(grad, diag, upper, lower, z, mode)
        return grad_diag, grad_upper, (upper.new_empty(0) if grad_lower is None else grad_lower), grad_z
    method = _torch_method(backend)
    grad_diag, grad_kap, grad_z = torch_backend.backward(grad, diag, couplings(upper, lower), z, mode, method)
    if lower is None:  # kap = b^2
        return grad_diag, 2 * upper * grad_kap, upper.new_empty(0), grad_z
    return grad_diag, grad_kap * lower, grad_kap * upper, grad_z


@bk_core_backward_op.register_fake
def _bk_core_backward_fake(grad, diag, upper, lower, z, mode, backend):
    grad_lower = upper.new_empty(0) if lower is None else torch.empty_like(lower)
    return torch.empty_like(diag), torch.empty_like(upper), grad_lower, torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    diag, upper, lower, z, mode, backend = inputs
    ctx.save_for_backward(diag, upper, lower, z)
    ctx.mode, ctx.backend = mode, backend


def _backward(ctx, grad):
    diag, upper, lower, z = ctx.saved_tensors
    grad_diag, grad_upper, grad_lower, grad_z = bk_core_backward_op(grad, diag, upper, lower, z, ctx.mode, ctx.backend)
    return grad_diag, grad_upper, (None if lower is None else grad_lower), grad_z, None, None


bk_core_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.resnetbk.bk_core)
def _bk_core_flops(diag_shape, upper_shape, lower_shape, z_shape, mode, backend, out_shape=None, **kwargs) -> int:
    return forward_flops(diag_shape, mode)


@register_flop_formula(torch.ops.resnetbk.bk_core_backward)
def _bk_core_backward_flops(grad_shape, diag_shape, *args, out_shape=None, **kwargs) -> int:
    mode = args[-2]
    return backward_flops(diag_shape, mode)
