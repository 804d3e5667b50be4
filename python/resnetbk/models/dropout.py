"""Dropout whose CPU masks come from a counter-based hash (``step_kernels::dropout``).

torch's CPU dropout draws each element from a Mersenne Twister one at a time: at the benchmark's
shape the Transformer's attention dropout alone took ~40 ms of a ~500 ms step. Here a float32
CPU tensor is dropped out by one Rust kernel keyed by a seed drawn from torch's generator (so
``torch.manual_seed`` still decides every mask), and the backward recomputes the same mask from
that seed instead of storing it. The distribution is dropout's (each element kept independently
with probability ``1 - p`` and scaled by ``1 / (1 - p)``); the masks are not the ones torch would
draw. Other devices and dtypes, and any dispatch mode (the FLOPs tracer prices torch's dropout),
use ``F.dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _native

#: Whether float32 CPU tensors go through the kernel; False runs ``F.dropout`` everywhere.
use_kernel = True


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` in distribution."""
    if not training or p == 0.0:
        return x
    if p == 1.0 or not kernel_applies(x):
        return F.dropout(x, p, training)
    return _Dropout.apply(x, 1.0 - p, draw_seed())


def draw_seed() -> int:
    """A kernel call's seed, drawn from torch's default generator (one draw per call)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def kernel_applies(x: Tensor) -> bool:
    """Whether ``dropout`` of ``x`` runs the kernel (else ``F.dropout``)."""
    return use_kernel and x.device.type == "cpu" and x.dtype == torch.float32 and _get_current_dispatch_mode() is None


def _drop(x: Tensor, keep: float, seed: int) -> Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    _native.dropout_f32(x.view(-1).numpy(), out.view(-1).numpy(), keep, seed, 0, torch.get_num_threads())
    return out


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, keep, seed):
        ctx.keep, ctx.seed = keep, seed
        return _drop(x, keep, seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return _drop(grad, ctx.keep, ctx.seed), None, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` through ``dropout`` (same arguments, same state)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)
