"""The ``"torch"`` backend: pure torch ops on any device (and, with ``method="triton"``, the Triton backend's algebra).

Forward and exact backward are vectorised over rows. Along the sequence they run either as
sequential sweeps (N small steps: best for short rows, and for many rows on CPU) or as
log-depth parallel scans (best for long rows); ``method="auto"`` picks by the length, the
number of rows and the device (see ``_use_scan``). ``method="triton"`` runs the same two
sequential primitives (the ratio recursion and the linear recurrence) as Triton kernels
(``triton_kernels``): the ``"triton"`` backend, the default on CUDA.

The backward is the exact adjoint derived in ``rust/bk-core/src/sweep.rs``, written here as two
linear recurrences:

    lam_gL_k = e_k + kap_k gL_{k+1}^2 lam_gL_{k+1}      (reverse; e = conj(gamma) causal, -kap_k lam_D_{k+1} bidirectional)
    lam_gR_k = -kap_{k-1} lam_D_{k-1} + kap_{k-1} gR_{k-1}^2 lam_gR_{k-1}   (forward, bidirectional only)
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn.functional import pad

from .reference import combine_bidirectional, left_ratios_sweep, shifted_diagonal
from .scan import left_ratios_scan, linear_recurrence_scan, linear_recurrence_sweep

METHODS = ("auto", "sweep", "scan", "triton")

#: ``method="auto"`` never scans rows shorter than this.
SCAN_MIN_LENGTH = 64
#: On CPU a sweep step costs about as much as this many scan elements-rounds (measured with
#: benches/: ~13 us per sweep step vs ~55 ns per element per scan round, one thread), so the
#: scan wins when rows * log2(N) is below it. On GPUs the sweep is launch-bound: scan from
#: SCAN_MIN_LENGTH on.
CPU_SWEEP_STEP_IN_SCAN_ELEMENTS = 235


def _use_scan(shape, device, method: str) -> bool:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method != "auto":
        return method == "scan"
    n = shape[-1]
    if n < SCAN_MIN_LENGTH:
        return False
    if device.type != "cpu":
        return True
    rows = math.prod(shape[:-1])
    return rows * math.log2(n) < CPU_SWEEP_STEP_IN_SCAN_ELEMENTS


def _primitives(shape, device, method: str):
    """The two sequential primitives ``(left_ratios(s, kap), linear_recurrence(e, m))`` for ``method``."""
    if method == "triton":
        from . import triton_kernels  # imported on first use: triton is only needed here

        return triton_kernels.left_ratios, triton_kernels.linear_recurrence
    if _use_scan(shape, device, method):
        return left_ratios_scan, linear_recurrence_scan
    return left_ratios_sweep, linear_recurrence_sweep


def _right_ratios(s: Tensor, kap: Tensor, left_ratios) -> Tensor:
    """``gR_k = 1/(s_k - kap_k gR_{k+1})``: the left recursion on the reversed row."""
    return left_ratios(s.flip(-1), kap.flip(-1)).flip(-1)


def forward(diag: Tensor, kap: Tensor, z: Tensor, mode: str, method: str = "auto") -> Tensor:
    """BK-Core forward. ``diag (..., N)`` real, ``kap (..., N-1)`` real, ``z (...)`` complex."""
    left_ratios, _ = _primitives(diag.shape, diag.device, method)
    s = shifted_diagonal(diag, z)
    g_left = left_ratios(s, kap)
    if mode == "causal":
        return g_left
    return combine_bidirectional(s, kap, g_left, _right_ratios(s, kap, left_ratios))


def forward_masked_bidirectional(diag: Tensor, kap: Tensor, z: Tensor, mask: Tensor, method: str = "auto") -> Tensor:
    """Bidirectional forward that reads out only where ``mask`` is true (0 elsewhere): both sweeps
    still run over every position, the per-site combination runs on the kept sites only."""
    left_ratios, _ = _primitives(diag.shape, diag.device, method)
    s = shifted_diagonal(diag, z)
    g_left, g_right = left_ratios(s, kap), _right_ratios(s, kap, left_ratios)
    from_left = pad(kap * g_left[..., :-1], (1, 0))
    from_right = pad(kap * g_right[..., 1:], (0, 1))
    out = s.new_zeros(s.shape)
    out[mask] = 1.0 / (s[mask] - from_left[mask] - from_right[mask])
    return out


def backward(
    grad: Tensor, diag: Tensor, kap: Tensor, z: Tensor, mode: str, method: str = "auto"
) -> tuple[Tensor, Tensor, Tensor]:
    """Exact vector-Jacobian product: returns ``(dL/d diag, dL/d kap, dL/dz)``.

    ``grad`` is the upstream gradient ``dL/dRe G + i dL/dIm G`` of shape ``diag.shape``.
    """
    left_ratios, recurrence = _primitives(diag.shape, diag.device, method)
    s = shifted_diagonal(diag, z)
    kap_c = kap.to(s.dtype)
    g_left = left_ratios(s, kap)
    lam_out = grad.to(s.dtype).conj_physical()

    def reverse_recurrence(e: Tensor, m: Tensor) -> Tensor:
        return recurrence(e.flip(-1), m.flip(-1)).flip(-1)

    # m_k = kap_k gL_{k+1}^2 multiplies lam_gL_{k+1} into lam_gL_k (the last entry is unused).
    m_left = pad(kap_c * g_left[..., 1:] ** 2, (0, 1))
    if mode == "causal":
        lam_gl = reverse_recurrence(lam_out, m_left)
        lam_s = -(g_left**2) * lam_gl
        lam_kap = -g_left[..., :-1] * lam_s[..., 1:]
    else:
        g_right = _right_ratios(s, kap, left_ratios)
        g = combine_bidirectional(s, kap, g_left, g_right)
        lam_d = -(g**2) * lam_out
        lam_gl = reverse_recurrence(pad(-kap_c * lam_d[..., 1:], (0, 1)), m_left)
        lam_gr = recurrence(pad(-kap_c * lam_d[..., :-1], (1, 0)), pad(kap_c * g_right[..., :-1] ** 2, (1, 0)))
        lam_dl = -(g_left**2) * lam_gl
        lam_dr = -(g_right**2) * lam_gr
        lam_s = lam_d + lam_dl + lam_dr
        lam_kap = -g_left[..., :-1] * (lam_d[..., 1:] + lam_dl[..., 1:]) - g_right[..., 1:] * (
            lam_d[..., :-1] + lam_dr[..., :-1]
        )
    grad_z = -lam_s.sum(dim=-1).conj_physical()
    return lam_s.real.contiguous(), lam_kap.real.contiguous(), grad_z


__all__ = ["METHODS", "backward", "forward", "forward_masked_bidirectional"]
