"""The original benchmark's "hybrid analytic gradient", kept as an explicitly named approximation.

It is NOT a gradient of anything (docs/design.md section 3). It exists so that its effect can be
measured against the exact gradient. For diag only, with upstream ``gamma = dL/dRe G + i dL/dIm G``:

    diagonal_term    = -Re(gamma * G^2)            (the Jacobian's diagonal, without the conjugate)
    inverse_sq_term  = -Re(gamma / G^2)            (|G^2| floored at 1e-3, keeping its phase)
    grad_diag        = clamp((1 - blend) * diagonal_term + blend * inverse_sq_term, -1000, 1000)

The seed also replaced NaN/Inf by 0 afterwards; that is not reproduced, so a NaN stays visible.
"""

from __future__ import annotations

import torch
from torch import Tensor

INVERSE_SQUARE_FLOOR = 1e-3
CLAMP = 1000.0


def hybrid_diag_grad(gamma: Tensor, g: Tensor, blend: float) -> Tensor:
    """The original benchmark's blended formula (see the module docstring); real, of shape ``g.shape``."""
    g2 = g * g
    magnitude = g2.abs()
    g2_floored = torch.where(magnitude < INVERSE_SQUARE_FLOOR, g2 / magnitude * INVERSE_SQUARE_FLOOR, g2)
    diagonal_term = -(gamma * g2).real
    inverse_sq_term = -(gamma / g2_floored).real
    return torch.clamp((1.0 - blend) * diagonal_term + blend * inverse_sq_term, -CLAMP, CLAMP)


class HybridBKCore(torch.autograd.Function):
    """Forward: the exact BK-Core op. Backward: the original benchmark's approximation, for ``diag`` only."""

    @staticmethod
    def forward(ctx, diag: Tensor, upper: Tensor, lower: Tensor | None, z: Tensor, mode: str, backend: str, blend: float):
        g = torch.ops.resnetbk.bk_core(diag, upper, lower, z, mode, backend)
        ctx.save_for_backward(g)
        ctx.blend = blend
        ctx.real_dtype = diag.dtype
        return g

    @staticmethod
    def backward(ctx, gamma: Tensor):
        (g,) = ctx.saved_tensors
        grad_diag = hybrid_diag_grad(gamma, g, ctx.blend).to(ctx.real_dtype)
        return grad_diag, None, None, None, None, None, None
