"""Log-depth parallel scans along the last dimension (the long-N path of the torch backend).

Both scans are inclusive Hillis-Steele scans: ``ceil(log2 N)`` rounds, each one batched tensor
op over all positions, so a GPU runs them in O(log N) depth (O(N log N) work). Position k only
ever combines positions ``<= k``, so causal outputs stay bit-identical when the future changes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _shift_right(x: Tensor, offset: int, fill: float) -> Tensor:
    """``y[..., k] = x[..., k - offset]``, with ``fill`` where ``k < offset``."""
    pad = torch.full(x.shape[:-1] + (offset,), fill, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x[..., :-offset]], dim=-1)


def left_ratios_scan(s: Tensor, kap: Tensor) -> Tensor:
    """``gL`` (see ``reference.left_ratios_sweep``) by a scan over Moebius maps.

    Each step ``x -> 1/(s_k - kap_{k-1} x)`` is the 2x2 matrix ``[[0, 1], [-kap_{k-1}, s_k]]``;
    ``gL_k`` is the prefix product applied to 0, i.e. its ``[0,1] / [1,1]`` entry ratio. Every
    partial product is divided by its largest entry: the ratio is scale-invariant, and without
    this the entries grow like the determinants the ratio form exists to avoid.
    """
    zero = torch.zeros_like(s)
    p, q, t = zero, torch.ones_like(s), s
    r = -torch.nn.functional.pad(kap, (1, 0)).to(s.dtype)
    n = s.shape[-1]
    offset = 1
    while offset < n:
        # Later segment (p, q, r, t) applied after the earlier one: M_later @ M_earlier.
        p0, q0 = _shift_right(p, offset, 1.0), _shift_right(q, offset, 0.0)
        r0, t0 = _shift_right(r, offset, 0.0), _shift_right(t, offset, 1.0)
        p, q, r, t = p * p0 + q * r0, p * q0 + q * t0, r * p0 + t * r0, r * q0 + t * t0
        scale = torch.stack([p.abs(), q.abs(), r.abs(), t.abs()]).amax(dim=0)
        p, q, r, t = p / scale, q / scale, r / scale, t / scale
        offset *= 2
    return q / t


def linear_recurrence_scan(e: Tensor, m: Tensor) -> Tensor:
    """``x_k = e_k + m_k x_{k-1}`` with ``x_0 = e_0`` (``m_0`` is ignored), by a scan over affine maps."""
    m = torch.cat([torch.zeros_like(m[..., :1]), m[..., 1:]], dim=-1)
    n = e.shape[-1]
    offset = 1
    while offset < n:
        # Earlier segment then later one: x -> e + m (e0 + m0 x) = (e + m e0) + (m m0) x.
        e = e + m * _shift_right(e, offset, 0.0)
        m = m * _shift_right(m, offset, 0.0)
        offset *= 2
    return e


def linear_recurrence_sweep(e: Tensor, m: Tensor) -> Tensor:
    """The same recurrence one position at a time (the reference for the scan)."""
    x = e[..., 0]
    out = [x]
    for k in range(1, e.shape[-1]):
        x = e[..., k] + m[..., k] * x
        out.append(x)
    return torch.stack(out, dim=-1)
