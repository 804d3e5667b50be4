"""Slow, obviously-correct references for the BK-Core.

* :func:`resolvent_diag_sweep`: the ratio-form recursion as a plain loop over positions,
  vectorised over rows and written with differentiable torch ops only. It is the forward of the
  ``"torch"`` backend for short rows, and ``grad="autograd"`` differentiates it directly.
* :func:`dense_resolvent_diag`: the definition itself, a dense inverse. O(N^3) (O(N^4) causal);
  for tests and demos at small N, in float64.

Notation as in ``rust/bk-core/src/sweep.rs``: ``s_k = a_k - z``, ``kap_k = b_k c_k``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def shifted_diagonal(diag: Tensor, z: Tensor) -> Tensor:
    """``s = a - z`` as a complex tensor of shape ``diag.shape``; ``z`` has shape ``diag.shape[:-1]``."""
    return diag.to(z.dtype) - z.unsqueeze(-1)


def left_ratios_sweep(s: Tensor, kap: Tensor) -> Tensor:
    """``gL_k = 1/(s_k - kap_{k-1} gL_{k-1})`` for every k, one position at a time."""
    g = 1.0 / s[..., 0]
    out = [g]
    for k in range(1, s.shape[-1]):
        g = 1.0 / (s[..., k] - kap[..., k - 1] * g)
        out.append(g)
    return torch.stack(out, dim=-1)


def combine_bidirectional(s: Tensor, kap: Tensor, g_left: Tensor, g_right: Tensor) -> Tensor:
    """``G_k = 1/(s_k - kap_{k-1} gL_{k-1} - kap_k gR_{k+1})`` from both one-sided ratios."""
    from_left = torch.nn.functional.pad(kap * g_left[..., :-1], (1, 0))
    from_right = torch.nn.functional.pad(kap * g_right[..., 1:], (0, 1))
    return 1.0 / (s - from_left - from_right)


def resolvent_diag_sweep(diag: Tensor, kap: Tensor, z: Tensor, mode: str) -> Tensor:
    """The BK-Core forward by sequential sweeps (differentiable with autograd)."""
    s = shifted_diagonal(diag, z)
    g_left = left_ratios_sweep(s, kap)
    if mode == "causal":
        return g_left
    g_right = left_ratios_sweep(s.flip(-1), kap.flip(-1)).flip(-1)
    return combine_bidirectional(s, kap, g_left, g_right)


def dense_tridiagonal(diag: Tensor, upper: Tensor, lower: Tensor) -> Tensor:
    """The dense ``(..., N, N)`` matrix with the given three diagonals."""
    return torch.diag_embed(diag) + torch.diag_embed(upper, offset=1) + torch.diag_embed(lower, offset=-1)


def dense_resolvent_diag(diag: Tensor, upper: Tensor, lower: Tensor | None, z: complex | Tensor, mode: str) -> Tensor:
    """The oracle: diagonal of ``(H - zI)^-1`` by ``torch.linalg.inv``, in complex128.

    ``mode="causal"`` inverts every leading block ``H_{0..k}`` and keeps its last diagonal entry.
    Inputs must already share one batch shape; ``z`` is a scalar or has shape ``diag.shape[:-1]``.
    """
    diag, upper = diag.double(), upper.double()
    lower = upper if lower is None else lower.double()
    n = diag.shape[-1]
    z = torch.as_tensor(z, dtype=torch.complex128, device=diag.device)
    shift = z.reshape(z.shape + (1, 1)) * torch.eye(n, dtype=torch.complex128, device=diag.device)
    h = dense_tridiagonal(diag, upper, lower).to(torch.complex128) - shift
    if mode == "bidirectional":
        return torch.linalg.inv(h).diagonal(dim1=-2, dim2=-1)
    return torch.stack([torch.linalg.inv(h[..., : k + 1, : k + 1])[..., k, k] for k in range(n)], dim=-1)
