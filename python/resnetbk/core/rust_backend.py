"""The ``"rust"`` backend: CPU tensors handed to ``resnetbk._native`` without copies.

Rows are flattened to ``(rows, N)``; inputs are made C-contiguous (a no-op when they already are)
and outputs are allocated by torch, so the kernels read and write torch's memory directly. The
kernels form ``kap = upper * lower`` themselves and return gradients for ``upper``/``lower``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _native
from ..threads import get_num_threads

_KERNELS = {
    torch.float32: (_native.bk_forward_f32, _native.bk_backward_f32),
    torch.float64: (_native.bk_forward_f64, _native.bk_backward_f64),
}


def _as_numpy(t: Tensor, rows: int, width: int):
    """A C-contiguous ``(rows, width)`` numpy view (a copy only if ``t`` is not contiguous)."""
    t = t.detach()
    if not t.is_contiguous() or t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg().contiguous()
    return t.numpy().reshape(rows, width)


def _inputs(diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, rows: int, n: int) -> tuple:
    """``(a, upper, lower or None, z)`` as the kernels take them."""
    return (
        _as_numpy(diag, rows, n),
        _as_numpy(upper, rows, n - 1),
        None if lower is None else _as_numpy(lower, rows, n - 1),
        _as_numpy(z, rows, 1).reshape(rows),
    )


def _mask(mask: Optional[Tensor], rows: int, n: int):
    return None if mask is None else _as_numpy(mask, rows, n)


def forward(diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str,
            mask: Optional[Tensor] = None) -> Tensor:
    """The resolvent diagonal; where ``mask`` (bool, ``diag.shape``) is false the output is 0."""
    n = diag.shape[-1]
    rows = diag.numel() // n
    out = torch.empty(diag.shape, dtype=z.dtype)
    if rows == 0:
        return out
    kernel, _ = _KERNELS[diag.dtype]
    kernel(
        *_inputs(diag, upper, lower, z, rows, n),
        out.view(rows, n).numpy(),
        mode,
        get_num_threads(),
        _mask(mask, rows, n),
    )
    return out


def backward(
    grad: Tensor, diag: Tensor, upper: Tensor, lower: Optional[Tensor], z: Tensor, mode: str,
    mask: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Optional[Tensor], Tensor]:
    """Returns ``(grad_diag, grad_upper, grad_lower or None, grad_z)``; with ``mask``, of the masked
    forward (upstream gradients at masked positions are ignored)."""
    n = diag.shape[-1]
    rows = diag.numel() // n
    grad_diag = torch.empty(diag.shape, dtype=diag.dtype)
    grad_upper = torch.empty(upper.shape, dtype=diag.dtype)
    grad_lower = None if lower is None else torch.empty(lower.shape, dtype=diag.dtype)
    grad_z = torch.empty(z.shape, dtype=z.dtype)
    if rows == 0:
        return grad_diag, grad_upper, grad_lower, grad_z
    _, kernel = _KERNELS[diag.dtype]
    kernel(
        *_inputs(diag, upper, lower, z, rows, n),
        _as_numpy(grad.to(z.dtype), rows, n),
        grad_diag.view(rows, n).numpy(),
        grad_upper.view(rows, n - 1).numpy(),
        None if grad_lower is None else grad_lower.view(rows, n - 1).numpy(),
        grad_z.view(rows).numpy(),
        mode,
        get_num_threads(),
        _mask(mask, rows, n),
    )
    return grad_diag, grad_upper, grad_lower, grad_z
