"""Per-token depth: tokens that stop before the last block, and really skip the later blocks' work.

Shared by two methods (``use_act``, ``use_early_exit``): whichever attaches first sets the
model's ``depth`` extension point to a ``PerTokenDepth`` (``attached_depth``), each then turns
on its own mechanism. It runs the model's stages, so it attaches after multi-scale (which
changes them).

Two mechanisms, usable together, over the model's stages (a block, or the shortened middle
group of the multi-scale option):

* ACT halting (Graves 2016, "Adaptive Computation Time for Recurrent Neural Networks"; per
  position over depth as in Dehghani et al. 2019, "Universal Transformers"). After stage ``l`` a
  halting unit gives ``p_l = sigmoid(w . h_l + b)``; a token halts at the first ``N`` where
  ``sum_{l<=N} p_l >= threshold`` (or at the last stage), with remainder ``R = 1 - sum_{l<N} p_l``.
  Its output is ``sum_{l<N} p_l h_l + R h_N``; the ponder cost ``N + R`` (mean over tokens) is
  the loss term ``ponder``.
* Confident early exit (Schuster et al. 2022, "Confident Adaptive Language Modeling"). After
  every stage but the last, the state is an exit (training adds the exits' losses through the
  shared LM head: ``resnetbk.methods.early_exit``). At evaluation with ``exit_threshold`` set, a
  cheap confidence head (``d -> 1``, not the vocabulary-sized head) decides: a token whose
  confidence passes the threshold leaves, and its state is its output.

A stopped token's state is carried forward unchanged, so later positions' BK-Core recursions
still see a complete sequence; the stopped rows skip the feed-forward work and the read-out.
Halting depends only on a position's own state, which depends only on positions <= it: causal.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

Stage = Callable[[Tensor, Optional[Tensor]], Tensor]


class PerTokenDepth(nn.Module):
    aux_loss_name = "ponder"

    def __init__(self, d_model: int, n_stages: int):
        super().__init__()
        self.d_model, self.n_stages = d_model, n_stages
        self.act_threshold = 1.0
        self.halting: Optional[nn.ModuleList] = None  # ACT's halting units, one per stage but the last
        self.confidence: Optional[nn.ModuleList] = None  # early exit's confidence heads, likewise
        #: Early exit at evaluation: None = every token runs every block.
        self.exit_threshold: Optional[float] = None
        # From the last forward:
        self.ponder: Optional[Tensor] = None
        self.exit_states: list = []
        self.blocks_per_token: Optional[Tensor] = None  # (B, N) blocks computed for each token

    @property
    def aux_loss(self) -> Optional[Tensor]:
        return self.ponder

    def halting_units(self, threshold: float) -> nn.ModuleList:
        """ACT on: ``d -> 1`` halting units (the caller initialises them and sets their bias)."""
        self.act_threshold = threshold
        self.halting = nn.ModuleList(nn.Linear(self.d_model, 1) for _ in range(self.n_stages - 1))
        return self.halting

    def confidence_heads(self) -> nn.ModuleList:
        """Early exit on: ``d -> 1`` confidence heads (the caller initialises them)."""
        self.confidence = nn.ModuleList(nn.Linear(self.d_model, 1) for _ in range(self.n_stages - 1))
        return self.confidence


    def forward(self, x: Tensor, stages: list[tuple[Stage, int]]) -> Tensor:
        """Runs ``stages`` (pairs ``(fn(x, active), number of blocks)``) with per-token stopping."""
        b, n, d = x.shape
        t = b * n
        active = torch.ones(t, dtype=torch.bool, device=x.device)
        blocks = torch.zeros(t, device=x.device)
        act = self.halting is not None
        exiting = self.confidence is not None and self.exit_threshold is not None and not self.training
        cumulative = x.new_zeros(t, dtype=torch.float32)
        output = x.new_zeros(t, d) if act else None
        ponder_remainder = x.new_zeros(t, dtype=torch.float32)
        halted_at = torch.zeros(t, device=x.device)
        self.exit_states = []
        last = len(stages) - 1
        for i, (stage, n_blocks) in enumerate(stages):
            x = stage(x, None if bool(active.all()) else active)
            blocks = blocks + n_blocks * active
            flat = x.reshape(t, d)
            if self.confidence is not None and i < last:
                self.exit_states.append(x)
            stop = torch.zeros_like(active) if i < last else active.clone()
            if exiting and i < last:
                confidence = torch.sigmoid(self.confidence[i](flat.detach()).float()).squeeze(-1)
                stop = stop | (active & (confidence >= self.exit_threshold))
            if act:
                p = torch.zeros_like(cumulative)
                if i < last:
                    p = torch.sigmoid(self.halting[i](flat).float()).squeeze(-1) * active
                stop = stop | (active & (cumulative + p >= self.act_threshold))
                remainder = 1.0 - cumulative
                weight = torch.where(stop, remainder, torch.where(active, p, torch.zeros_like(p)))
                output = output + weight[:, None].to(flat.dtype) * flat
                ponder_remainder = ponder_remainder + torch.where(stop, remainder, torch.zeros_like(remainder))
                cumulative = cumulative + p
            halted_at = torch.where(stop, torch.full_like(halted_at, i + 1), halted_at)
            active = active & ~stop
        self.blocks_per_token = blocks.view(b, n)
        self.ponder = (halted_at + ponder_remainder).mean() if act else None
        return output.view(b, n, d) if act else x


def attached_depth(model) -> PerTokenDepth:
    """The model's ``PerTokenDepth`` (its ``depth`` extension point), attached on first use."""
    if model.depth is None:
        model.depth = PerTokenDepth(model.options.d_model, len(model.stage_ranges))
    return model.depth
