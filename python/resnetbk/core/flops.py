"""FLOP formulas of the BK-Core ops, so ``torch.utils.flop_counter.FlopCounterMode`` counts them.

The per-position counts come from the FLOPs engine (``rust/flops-engine``), the one place that
states them: real FLOPs as the Rust kernels execute them (a real add, multiply or division is 1;
a complex reciprocal ``conj(x)/|x|^2`` is 6; negations are free), the backward's recomputation of
the forward sweeps included.
"""

from __future__ import annotations

import math

from .. import _native

_PER_ELEMENT = _native.bk_flops_per_element()
FORWARD_PER_ELEMENT = dict(_PER_ELEMENT["forward"])
BACKWARD_PER_ELEMENT = dict(_PER_ELEMENT["backward"])


def forward_flops(diag_shape, mode: str) -> int:
    return FORWARD_PER_ELEMENT[mode] * math.prod(diag_shape)


def backward_flops(diag_shape, mode: str) -> int:
    return BACKWARD_PER_ELEMENT[mode] * math.prod(diag_shape)
