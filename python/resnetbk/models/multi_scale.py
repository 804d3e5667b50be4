"""Causal 2x shortening around the middle blocks (hourglass; Nawrot et al. 2021, "Hierarchical
Transformers Are More Efficient Language Models").

Shorten: shift the sequence right by one position (zeros first), pad to even length, and merge
each pair with a linear map, so coarse position ``j`` summarises fine positions ``2j-1`` and
``2j`` only. Upsample: a linear map from each coarse position to two fine ones, fine ``t``
reading coarse ``t // 2``, whose inputs end at fine ``2 (t // 2) <= t``: causal. The result is
added back to the fine sequence (a residual around the whole shortened group).
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


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
