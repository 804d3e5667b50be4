"""The ``"rust"`` backend: CPU tensors handed to ``resnetbk._native`` without copies.

Rows are flattened to ``(rows, N)``; inputs are made C-contiguous (a no-op when they already are)
and outputs are allocated by torch, so the kernels read and write torch's memory directly.
"""

from __future__ import annotations

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
    return t.detach().resolve_conj().resolve_neg().reshape(rows, width).contiguous().numpy()


def forward(diag: Tensor, kap: Tensor, z: Tensor, mode: str) -> Tensor:
    n = diag.shape[-1]
    rows = diag.numel() // n
    out = torch.empty(diag.shape, dtype=z.dtype)
    if rows == 0:
        return out
    kernel, _ = _KERNELS[diag.dtype]
    kernel(
        _as_numpy(diag, rows, n),
        _as_numpy(kap, rows, n - 1),
        _as_numpy(z, rows, 1).reshape(rows),
        out.view(rows, n).numpy(),
        mode,
        get_num_threads(),
    )
    return out


def backward(grad: Tensor, diag: Tensor, kap: Tensor, z: Tensor, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    n = diag.shape[-1]
    rows = diag.numel() // n
    grad_diag = torch.empty(diag.shape, dtype=diag.dtype)
    grad_kap = torch.empty(kap.shape, dtype=diag.dtype)
    grad_z = torch.empty(z.shape, dtype=z.dtype)
    if rows == 0:
        return grad_diag, grad_kap, grad_z
    _, kernel = _KERNELS[diag.dtype]
    kernel(
        _as_numpy(diag, rows, n),
        _as_numpy(kap, rows, n - 1),
        _as_numpy(z, rows, 1).reshape(rows),
        _as_numpy(grad.to(z.dtype), rows, n),
        grad_diag.view(rows, n).numpy(),
        grad_kap.view(rows, n - 1).numpy(),
        grad_z.view(rows).numpy(),
        mode,
        get_num_threads(),
    )
    return grad_diag, grad_kap, grad_z
