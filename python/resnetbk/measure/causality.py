"""A black-box causality probe for language models.

For several prefix lengths, the suffix tokens are replaced by other random tokens; a causal
model's logits at the prefix positions must not move (up to float32 rounding: batched kernels
may differ in the last bits between inputs of the same shape). The change is measured
relative to the largest prefix logit (at least 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ProbeResult:
    causal: bool
    max_prefix_change: float
    tolerance: float
    prefix_lengths: list

    def summary(self) -> str:
        verdict = "causal" if self.causal else "NOT causal: its outputs read future tokens"
        return (f"{verdict} (largest change of a prefix logit when the suffix changes: {self.max_prefix_change:.2e}, "
                f"tolerance {self.tolerance:.0e}, prefix lengths {self.prefix_lengths})")


@torch.no_grad()
def probe_causality(model: nn.Module, vocab_size: int, n_seq: int, *, device="cpu", batch: int = 2,
                    trials: int = 2, tolerance: float = 1e-6, seed: int = 0) -> ProbeResult:
    """Changes tokens after each prefix and checks the prefix logits (model in eval mode)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    prefix_lengths = sorted({1, max(1, n_seq // 4), max(1, n_seq // 2), max(1, n_seq - 1)})
    worst = 0.0
    try:
        for _ in range(trials):
            tokens = torch.randint(vocab_size, (batch, n_seq), generator=gen)
            base = model(tokens.to(device)).float()
            for k in prefix_lengths:
                if k >= n_seq:
                    continue
                changed = tokens.clone()
                changed[:, k:] = torch.randint(vocab_size, (batch, n_seq - k), generator=gen)
                out = model(changed.to(device)).float()
                scale = base[:, :k].abs().amax().clamp_min(1.0)
                worst = max(worst, ((out[:, :k] - base[:, :k]).abs().amax() / scale).item())
    finally:
        model.train(was_training)
    return ProbeResult(causal=worst <= tolerance, max_prefix_change=worst, tolerance=tolerance,
                       prefix_lengths=[k for k in prefix_lengths if k < n_seq])
