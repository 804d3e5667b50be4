"""The original benchmark's way of computing the BK-Core, kept only as a timing baseline.

A Python loop over positions of batched complex128 tensor ops (as the original benchmark's code did), with
either autograd through the loop or the original benchmark's hybrid backward. It uses the ratio form so that
its outputs stay finite (the original benchmark's determinant products overflow past N ~ 500 in complex128);
the cost per position is the same kind: a few small batched complex ops and Python overhead.
"""

from __future__ import annotations

import torch

from resnetbk.core.hybrid import hybrid_diag_grad


def seed_style_forward(v: torch.Tensor, z: complex = 1j) -> torch.Tensor:
    """Causal resolvent diagonal of H = Laplacian + diag(v), by a Python loop in complex128."""
    a = (v.to(torch.complex128) - 2.0) - z
    g = 1.0 / a[:, 0]
    out = [g]
    for k in range(1, a.shape[1]):
        g = 1.0 / (a[:, k] - g)  # b = c = 1
        out.append(g)
    return torch.stack(out, dim=1)


class SeedStyleHybrid(torch.autograd.Function):
    """The original-style loop forward with the original benchmark's hybrid (non-)gradient as backward."""

    @staticmethod
    def forward(ctx, v):
        with torch.no_grad():
            g = seed_style_forward(v)
        ctx.save_for_backward(g)
        return g

    @staticmethod
    def backward(ctx, gamma):
        (g,) = ctx.saved_tensors
        return hybrid_diag_grad(gamma, g, 0.5).to(torch.float32)
