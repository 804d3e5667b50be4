"""``use_analytic_gradient``: the BK-Core's exact O(N) backward instead of autograd.

What it does: the BK-Core's backward runs the exact adjoint of the sweeps (``resnetbk.core``;
derivation in ``rust/bk-core/src/sweep.rs``), in the Rust kernels on CPU, instead of autograd
through the pure-torch implementation (the baseline: O(N) small graph nodes per row).

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): the BK
op's backward at 32 x 128 takes 0.14 ms against 1.82 ms through autograd (13.2x, the claim is 50x:
not borne out); the whole training step 0.98x tokens/s, since the BK-Core is a small share of it;
test perplexity +0.0%. Longer rows gain more (README, "Measured speed").

Paper: the adjoint (reverse-mode) differentiation of a linear recurrence; the original's
"hybrid analytic gradient" was not a gradient (``resnetbk.core.hybrid``).
"""

from .base import Method
from .verdict import Factor, judge


class AnalyticGradient(Method):
    flag = "use_analytic_gradient"
    claim = "50x backward pass"
    acts_on = "the BK-Core's backward pass"
    paper = "exact adjoint of the ratio-form recursion (reverse-mode differentiation; docs/design.md section 3)"
    needs_mixer = True
    default = True
    estimable = True  # the estimate prices the exact backward already

    @classmethod
    def configure_model(cls, options, config):
        return options.replace(bk_grad="exact")

    @classmethod
    def assess(cls, row):
        op = (row.bk_op or {})
        speedup = op.get("backward_speedup_exact_vs_autograd")
        step = row.tokens_per_second_ratio
        own = (f"BK op backward {op.get('backward_ms_autograd', float('nan')):.2f} ms -> "
               f"{op.get('backward_ms_exact', float('nan')):.2f} ms ({speedup:.1f}x); whole step {step:.2f}x"
               if speedup else f"whole step {step:.2f}x")
        if speedup is None:
            return own, "not measured"
        return own, judge([Factor("the BK op's backward", speedup, 50)], row.test_perplexity_change_percent,
                          noise_percent=row.perplexity_noise_percent)
