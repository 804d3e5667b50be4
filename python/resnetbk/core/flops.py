"""FLOP formulas of the BK-Core ops, so ``torch.utils.flop_counter.FlopCounterMode`` counts them.

Counted as the Rust kernels execute them (``rust/bk-core/src/sweep.rs``), per sequence position,
with real FLOPs: a real add, multiply or division is 1; a complex add is 2, a complex multiply 6,
a real-times-complex product 2, and a complex reciprocal ``conj(x)/|x|^2`` is 6 (2 multiplies,
1 add, 1 division, 2 multiplies). Negations are free. The backward recomputes the forward sweeps
it needs instead of storing them, and that recomputation is included.
"""

from __future__ import annotations

import math

# Forward: s = a - z (2), kap*g (2), subtract (2), reciprocal (6) per left-sweep step; the
# bidirectional right pass adds s, two couplings, two subtractions and two reciprocals.
FORWARD_PER_ELEMENT = {"causal": 12, "bidirectional": 12 + 22}
# Backward: left sweep (12) + reverse scan; bidirectional adds the right pass, lam_D, and the
# forward scan. See the module docstring of sweep.rs for the recurrences.
BACKWARD_PER_ELEMENT = {"causal": 12 + 21, "bidirectional": 12 + 55 + 23}


def forward_flops(diag_shape, mode: str) -> int:
    return FORWARD_PER_ELEMENT[mode] * math.prod(diag_shape)


def backward_flops(diag_shape, mode: str) -> int:
    return BACKWARD_PER_ELEMENT[mode] * math.prod(diag_shape)
