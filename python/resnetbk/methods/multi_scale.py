"""``use_multi_scale``: the middle blocks run on a causally 2x-shortened sequence.

What it does: ``k = max(1, n_layers // 4)`` blocks at each end run at full length N; the blocks
between them run at ``ceil(N / 2)``: the sequence is shifted right by one position and each
pair merged by a linear map (so a coarse position summarises only completed fine positions),
and after the middle blocks a linear map back to two positions each, added to the fine sequence
(``resnetbk.models.multi_scale``). The middle blocks' MoE, BK-Core and projections do half the
work.

Records: the forward FLOPs per token of an evaluation, and the middle blocks' share.

Measured effect (``results/ablation_quick``: quick preset, 150 steps, 2 CPU threads): the
middle blocks' forward FLOPs per step 2.01x lower (the claim held for them); the whole step
1.00x FLOPs, since the LM head dominates; test perplexity +1.1%.

Paper: Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient Language Models"
(hourglass: shift-then-pool shortening, linear upsampling, residual).
"""

from .base import Method
from .evaluation import record_evaluation


class MultiScale(Method):
    flag = "use_multi_scale"
    claim = "2x in the middle layers"
    acts_on = "the middle blocks' sequence length"
    paper = "Nawrot et al. 2021, Hierarchical Transformers Are More Efficient Language Models (hourglass)"

    @classmethod
    def validate(cls, config) -> None:
        if config.n_layers < 3:
            raise ValueError(f"use_multi_scale: needs n_layers >= 3 (full-resolution blocks around shortened middle "
                             f"blocks), got n_layers = {config.n_layers}")

    @classmethod
    def configure_model(cls, options, config):
        return options.replace(multi_scale=True)

    def on_evaluation(self, state) -> None:
        figures = record_evaluation(state, components=True)
        k = max(1, self.config.n_layers // 4)
        figures["shortened_blocks"] = list(range(k, self.config.n_layers - k))
        state.figures[self.flag] = figures

    @classmethod
    def assess(cls, row):
        middle = row["figures"].get("shortened_blocks", [])
        mine, theirs = row["forward_flops_by_component"], row["baseline_forward_flops_by_component"]

        def middle_flops(table):
            return sum(v for k, v in table.items() if any(k.startswith(f"blocks.{i}.") or k == f"blocks.{i}"
                                                           for i in middle))

        if not middle or not theirs:
            return "-", "not measured"
        ratio = middle_flops(theirs) / max(middle_flops(mine), 1e-9)
        own = (f"middle blocks' forward FLOPs per training step {ratio:.2f}x lower; "
               f"step tokens/s {row['tokens_per_second_ratio']:.2f}x")
        held = ratio >= 2 * 0.95
        return own, ("held for the middle blocks' FLOPs" if held else f"not borne out: {ratio:.2f}x (claimed 2x)") + (
            f"; test perplexity {row['test_perplexity_change_percent']:+.1f}%")
