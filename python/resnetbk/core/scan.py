"""Log-depth parallel scans along the last dimension (the long-N path of the torch backend).

Both scans are inclusive Hillis-Steele scans: ``ceil(log2 N)`` rounds, each one batched tensor
op over all positions, so a GPU runs them in O(log N) depth (O(N log N) work). Position k only
ever combines positions ``<= k``, so causal outputs stay bit-identical when the future changes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def left_ratios_scan(s: Tensor, kap: Tensor) -> Tensor:
    """``gL`` (see ``reference.left_ratios_sweep``) by a scan over Moebius maps.

    Each step ``x -> 1/(s_k - kap_{k-1} x)`` is the 2x2 matrix ``[[0, 1], [-kap_{k-1}, s_k]]``;
    ``gL_k`` is the prefix product applied to 0, i.e. its ``[0,1] / [1,1]`` entry ratio. Every
    partial product is divided by its largest entry: the ratio is scale-invariant, and without
    this the entries grow like the determinants the ratio form exists to avoid.

    The matrices are stored as one ``(2, 2, ..., N)`` tensor so that a round is a handful of
    kernels (shift, multiply, sum, rescale) whatever the batch shape: GPUs are launch-bound here.
    """
    n = s.shape[-1]
    couplings = -torch.nn.functional.pad(kap, (1, 0)).to(s.dtype)
    m = torch.stack([torch.stack([torch.zeros_like(s), torch.ones_like(s)]), torch.stack([couplings, s])])
    identity = torch.eye(2, dtype=s.dtype, device=s.device).reshape((2, 2) + (1,) * s.dim())
    offset = 1
    while offset < n:
        # Each product M_later @ M_earlier, where the earlier segment ends `offset` sites back
        # (the identity before the start of the row).
        earlier = torch.cat([identity.expand((2, 2) + s.shape[:-1] + (offset,)), m[..., :-offset]], dim=-1)
        m = (m.unsqueeze(2) * earlier.unsqueeze(0)).sum(dim=1)
        # The scale is outside autograd: the ratio does not depend on it, so its exact gradient
        # is zero, and differentiating it would only add passes (abs, max, division) to the
        # backward of grad="autograd".
        m = m * m.detach().abs().amax(dim=(0, 1), keepdim=True).reciprocal_()
        offset *= 2
    return m[0, 1] / m[1, 1]


def linear_recurrence_scan(e: Tensor, m: Tensor) -> Tensor:
    """``x_k = e_k + m_k x_{k-1}`` with ``x_0 = e_0`` (``m_0`` is ignored), by a scan over affine maps.

    A segment is the map ``x -> e + m x``; the earlier one then the later one compose to
    ``(e + m e0, m m0)``. ``(e, m)`` are stacked so that a round is three kernels.
    """
    state = torch.stack([e, torch.cat([torch.zeros_like(m[..., :1]), m[..., 1:]], dim=-1)])
    n = e.shape[-1]
    offset = 1
    while offset < n:
        earlier = torch.nn.functional.pad(state[..., :-offset], (offset, 0))  # the zero map before the row
        composed = state[1] * earlier  # (m e0, m m0)
        composed[0] += state[0]
        state = composed
        offset *= 2
    return state[0]


def linear_recurrence_sweep(e: Tensor, m: Tensor) -> Tensor:
    """The same recurrence one position at a time (the reference for the scan)."""
    x = e[..., 0]
    out = [x]
    for k in range(1, e.shape[-1]):
        x = e[..., k] + m[..., k] * x
        out.append(x)
    return torch.stack(out, dim=-1)
