"""``use_multi_scale``: the middle blocks run on a causally 2x-shortened sequence.

What it does: ``k = max(1, n_layers // 4)`` blocks at each end run at full length N; the blocks
between them run at ``ceil(N / 2)``: the sequence is shifted right by one position and each
pair merged by a linear map (so a coarse position summarises only completed fine positions),
and after the middle blocks a linear map back to two positions each, added to the fine sequence
(``ShortenedGroup`` below, attached as the model's ``shortened`` with its ``stage_ranges``).
The middle blocks' MoE, BK-Core and projections do half the work.

The shortening (Nawrot et al.'s shift-then-pool): shift the sequence right by one position
(zeros first), pad to even length, and merge each pair with a linear map, so coarse position
``j`` summarises fine positions ``2j-1`` and ``2j`` only. Upsampling: a linear map from each
coarse position to two fine ones, fine ``t`` reading coarse ``t // 2``, whose inputs end at fine
``2 (t // 2) <= t``: causal. The result is added back to the fine sequence (a residual around
the whole shortened group).

Records: the forward FLOPs per token of an evaluation, and the middle blocks' share. The
verdict compares the baseline's middle blocks with this row's middle group, its shortening and
upsampling included: the saving's own price.

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): the
middle group's forward FLOPs per step 1.37x lower with the shortening and upsampling counted (2.01x
for its blocks alone; the claim is 2x: not borne out); the whole step's FLOPs 1.00x, since the LM
head dominates. Its test perplexity is the best of any row, 3.5% below the baseline's (349.38
against 361.89; one seed).

Paper: Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient Language Models"
(hourglass: shift-then-pool shortening, linear upsampling, residual).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Method
from .evaluation import record_evaluation
from .verdict import Factor, judge


def shortened_stage_ranges(n_layers: int) -> list:
    """The stages ``(first, stop, shortened)``: ``k = max(1, n_layers // 4)`` full-resolution blocks
    on each side, one stage of the ``n_layers - 2k`` middle blocks at half resolution."""
    k = max(1, n_layers // 4)
    outer = [(i, i + 1, False) for i in range(k)]
    return outer + [(k, n_layers - k, True)] + [(i, i + 1, False) for i in range(n_layers - k, n_layers)]


class ShortenedGroup(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.shorten = nn.Linear(2 * d_model, d_model)
        self.upsample = nn.Linear(d_model, 2 * d_model)

    def forward(self, x: Tensor, blocks, active: Optional[Tensor] = None) -> Tensor:
        """``x (B, N, d)`` through ``blocks`` at length ``ceil(N / 2)``; ``active`` masks the update."""
        b, n, d = x.shape
        shifted = F.pad(x, (0, 0, 1, n % 2))[:, : n + n % 2]  # x[t - 1], zeros at t = 0, even length
        coarse = self.shorten(shifted.reshape(b, -1, 2 * d))
        for block in blocks:
            coarse = block(coarse)
        up = self.upsample(coarse).reshape(b, -1, d)[:, :n]
        if active is not None:
            up = up * active.view(b, n, 1).to(up.dtype)
        return x + up




class MultiScale(Method):
    flag = "use_multi_scale"
    claim = "2x in the middle layers"
    acts_on = "the middle blocks' sequence length"
    paper = "Nawrot et al. 2021, Hierarchical Transformers Are More Efficient Language Models (hourglass)"

    @classmethod
    def validate(cls, config) -> None:
        if config.model.n_layers < 3:
            raise ValueError(f"use_multi_scale: needs n_layers >= 3 (full-resolution blocks around shortened middle "
                             f"blocks), got n_layers = {config.model.n_layers}")

    @classmethod
    def attach(cls, model, config) -> None:
        model.stage_ranges = shortened_stage_ranges(len(model.blocks))
        model.shortened = model.init_attached(ShortenedGroup(config.model.d_model))

    def on_evaluation(self, state) -> None:
        figures = record_evaluation(state, components=True)
        k = max(1, self.config.model.n_layers // 4)
        figures["shortened_blocks"] = list(range(k, self.config.model.n_layers - k))
        state.figures[self.flag] = figures

    @classmethod
    def assess(cls, row):
        middle = row.figures.get("shortened_blocks", [])
        mine, theirs = row.forward_flops_by_component, row.baseline_forward_flops_by_component

        def middle_flops(table, with_shortening):
            # The middle group: its blocks and, in this row, the shortening and upsampling that
            # make their shorter sequence (the price of the saving).
            return sum(v for k, v in table.items() if any(k.startswith(f"blocks.{i}.") or k == f"blocks.{i}"
                                                           for i in middle)
                       or (with_shortening and (k == "shortened" or k.startswith("shortened."))))

        if not middle or not theirs:
            return "-", "not measured"
        ratio = middle_flops(theirs, False) / max(middle_flops(mine, True), 1e-9)
        blocks_only = middle_flops(theirs, False) / max(middle_flops(mine, False), 1e-9)
        own = (f"the middle group's forward FLOPs per training step: the baseline's over this row's {ratio:.2f}x, "
               f"shortening and upsampling included ({blocks_only:.2f}x for its blocks alone); step tokens/s "
               f"{row.tokens_per_second_ratio:.2f}x")
        return own, judge([Factor("cheaper middle group (forward FLOPs, shortening included)", ratio, 2)],
                          row.test_perplexity_change_percent,
                          noise_percent=row.perplexity_noise_percent)
