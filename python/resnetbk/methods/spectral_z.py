"""``use_spectral_z``: a learnable spectral shift ``z = E + i*eta`` for every BK-Core channel.

Not one of the original benchmark's twelve: this package's own method (issue 11), measured the
same way, and left out of ``resnet_bk_full`` (which turns on the original twelve).

What it does: every block's mixer runs ``spectral_channels`` BK-Core channels (0 keeps
``bk_channels``), each with its own ``z``: ``E`` learnable from 0 (the fixed ``z = i``'s real
part), ``eta`` learnable on a log scale from values log-spaced over ``[eta_min, eta_max]``.
Why: with ``z = i`` the causal recursion forgets about 4x per position (``|dg_k/dg_{k-1}| =
|g_k|^2``, about 0.25), so ResNet-BK is a near-local model; a channel with a small ``eta`` can
carry its state much further, as state-space models do with their learnt step sizes. The
resolvent stays causal and bounded (``|G| <= 1/eta``; ``eta`` is floored at
``ETA_FLOOR``), and the exact O(N) gradient covers ``z``. ``SpectralShift`` is attached to
every mixer as its ``shift`` extension point.

Records: each block's learnt ``E`` and ``eta`` per channel at evaluation. The ablation compares
the context reach (``resnetbk.measure.context_reach``) with the baseline's.

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads, 8
channels): the loss's sensitivity to the input 8 positions back 6.5e5x the fixed z's, 32 back
8.4e5x; test perplexity +2.6% against the 1-channel baseline: it looks further back but predicts no
better. The strongest channel of each block learnt an ``eta`` of 0.001-0.009 (``bench decay-law``:
the strongest channels decay 1.1-1.7x per position, against 4.1-4.5x at z = i). Earlier, at 150
steps (``results/spectral_quick``): reach 1e5x, perplexity unchanged.

Paper: the idea of learnt, log-spaced time scales comes from the state-space models: Gu et al.
2022, "Efficiently Modeling Long Sequences with Structured State Spaces" (S4), and Gu and Dao
2023, "Mamba" (input-independent log-spaced initialisation of the step size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models.options import REAL_COUPLINGS
from .base import Method, check_int, check_number

#: The smallest eta a learnt spectral parameter may reach: keeps ``|G| <= 1/eta`` at most 1e4,
#: well inside float32 for the forward and the adjoint.
ETA_FLOOR = 1e-4

#: The context-reach distances the ablation's verdict compares (relative sensitivity).
REACH_DISTANCES = (8, 32)
#: A test perplexity this many percent lower than the baseline's counts as a gain (smaller
#: changes are within what a different seed moves).
PERPLEXITY_GAIN_PERCENT = 1.0


class SpectralShift(nn.Module):
    """``z = E + i*eta`` per channel: ``E`` learnable from 0 (the fixed ``z = i``'s real part),
    ``eta`` learnable on a log scale from values log-spaced over ``[eta_min, eta_max]``, floored
    at ``ETA_FLOOR``."""

    def __init__(self, channels: int, eta_min: float, eta_max: float):
        super().__init__()
        self.energy = nn.Parameter(torch.zeros(channels))
        self.log_eta = nn.Parameter(torch.linspace(math.log(eta_min), math.log(eta_max), channels))

    def forward(self) -> Tensor:
        return torch.complex(self.energy, self.log_eta.exp().clamp(min=ETA_FLOOR))


class SpectralZ(Method):
    flag = "use_spectral_z"
    original = False
    claim = "ours: longer context reach and lower perplexity than the fixed z = i"
    acts_on = "the BK-Core mixer's spectral shift z, per channel"
    paper = "Gu et al. 2022 (S4) and Gu and Dao 2023 (Mamba): learnt, log-spaced time scales"
    needs_mixer = True
    hyperparameters = {"spectral_channels": 8, "eta_min": 1e-3, "eta_max": 1.0}

    @classmethod
    def validate(cls, config) -> None:
        check_int(cls.settings_of(config), "spectral_channels", low=0, expected="0 (keep bk_channels) or a positive integer")
        check_number(cls.settings_of(config), "eta_min", low=0.0, low_open=True)
        check_number(cls.settings_of(config), "eta_max", low=cls.settings_of(config).eta_min)

    @classmethod
    def configure_model(cls, options, config):
        if options.bk_coupling in REAL_COUPLINGS:  # its z sits next to the real axis, below the spectrum
            raise ValueError(f"use_spectral_z: the resolvent below the spectrum (bk_coupling: {options.bk_coupling}) fixes z; "
                             "a learnt z could reach the spectrum. Turn one of them off")
        channels = cls.settings_of(config).spectral_channels or options.bk_channels
        return options.replace(bk_channels=channels)

    @classmethod
    def attach(cls, model, config) -> None:
        for block in model.blocks:
            block.bk.shift = SpectralShift(block.bk.channels, cls.settings_of(config).eta_min, cls.settings_of(config).eta_max)

    def on_evaluation(self, state) -> None:
        blocks = []
        for block in state.model.blocks:
            z = block.bk.spectral_z()
            blocks.append({"energy": z.real.tolist(), "eta": z.imag.tolist()})
        state.figures[self.flag] = {"learnt_z_by_block": blocks}

    @classmethod
    def assess(cls, row):
        reach, base = row.context_reach, row.baseline_context_reach
        change = row.test_perplexity_change_percent
        if not reach or not base:
            return f"test perplexity {change:+.1f}%", "not measured (no context reach in the results)"
        ratios = []
        for d in REACH_DISTANCES:
            if d < len(reach["relative"]) and d < len(base["relative"]) and base["relative"][d] > 0:
                ratios.append((d, reach["relative"][d] / base["relative"][d]))
        own = "; ".join(f"reach at d = {d} {ratio:.3g}x the baseline's" for d, ratio in ratios)
        own = f"{own}; test perplexity {change:+.1f}%" if own else f"test perplexity {change:+.1f}%"
        further = bool(ratios) and all(ratio > 1 for _, ratio in ratios)
        if further and change <= -PERPLEXITY_GAIN_PERCENT:
            return own, "held"
        if further:
            return own, (f"reach held, perplexity not: it looks further back but predicts no better "
                         f"({change:+.1f}%, a gain needs {-PERPLEXITY_GAIN_PERCENT:.0f}% or better)")
        return own, "not borne out: no longer context reach than the fixed z = i"
