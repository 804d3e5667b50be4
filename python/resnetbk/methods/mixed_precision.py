"""``use_mixed_precision``: the forward under autocast (bfloat16 on CPU, bfloat16 or float16 on CUDA).

What it does: every forward (training and evaluation) runs in ``torch.autocast`` with
``amp_dtype``; the BK-Core itself stays float32 (its inputs are cast up), float16 uses a
GradScaler (CUDA only).

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): 0.64x
tokens/s and 1.90x peak memory against float32 (perplexity +0.0%); side by side in one process
(``benches/amp_step.py``, ``results/ablation-epoch/mixed_precision_ab.json``) the step runs 0.61x
as fast under bf16 autocast on this Sapphire Rapids CPU with AMX: the float32 step runs this
package's Rust kernels (the LM head's cross-entropy, dropout) and autocast's bf16 path runs torch's
ops. The claim (2x speed, half the memory) is not borne out here. On a CPU without native bf16
(AVX-512 BF16 or AMX; ``resnetbk.hardware``) bf16 matmuls run about 20x slower than float32 (AMD
Zen 3: ``resnet_bk_baseline`` with ``--amp`` trained at 899 tokens/s against 9,797 without), so
there the flag alone is an error unless ``allow_slow_bf16`` is set, and ``resnet_bk_full`` leaves
the method out and says why in its results (``left_out_methods``). GPUs not measured yet.

Paper: Micikevicius et al. 2018, "Mixed Precision Training"; bf16: Kalamkar et al. 2019.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..hardware import slow_bf16_reason
from ..validate import check_bool, check_choice
from .base import Method
from .verdict import Factor, judge


def slow_precision_reason(config) -> Optional[str]:
    """Why ``config``'s autocast would run slower than float32 where it runs (a CPU without native
    bf16), in words; None when it would not (float16 on CUDA, bf16 on CUDA or on a CPU with native bf16)."""
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" or config.methods["use_mixed_precision"].amp_dtype != "bfloat16":
        return None
    return slow_bf16_reason()


class MixedPrecision(Method):
    flag = "use_mixed_precision"
    claim = "2x speed, 50% memory"
    acts_on = "the forward pass (autocast)"
    paper = "Micikevicius et al. 2018, Mixed Precision Training"
    changes_model = False
    architectures = ("resnet_bk", "transformer")
    #: ``allow_slow_bf16``: run bf16 autocast even on a CPU without native bf16 (to measure it).
    #: ``amp_dtype``: "bfloat16" (CPU or CUDA) or "float16" (CUDA, with a GradScaler).
    hyperparameters = {"amp_dtype": "bfloat16", "allow_slow_bf16": False}

    @classmethod
    def validate(cls, config) -> None:
        settings = cls.settings_of(config)
        check_choice(settings, "amp_dtype", ("bfloat16", "float16"))
        check_bool(settings, "allow_slow_bf16")

    @classmethod
    def check_fast(cls, config) -> None:
        """A ValueError, naming the flag and the way out, when ``config`` asks for a precision this
        machine cannot run fast and ``allow_slow_bf16`` is not set."""
        reason = slow_precision_reason(config)
        if reason is not None and not cls.settings_of(config).allow_slow_bf16:
            raise ValueError(f"use_mixed_precision: {reason}; turn mixed precision off (no --amp), or set "
                             "allow_slow_bf16: true (--allow-slow-bf16) to measure it anyway")

    def on_model_built(self, state) -> None:
        if self.settings.amp_dtype == "float16" and state.device.type != "cuda":
            raise ValueError("amp_dtype: float16 autocast needs a CUDA device (it uses a GradScaler); use bfloat16 on CPU")
        self.check_fast(self.config)
        reason = slow_precision_reason(self.config)
        if reason is not None:  # allowed: say so in the results
            state.figures.setdefault(self.flag, {})["slow_precision_allowed"] = reason

    def grad_scaler(self, device):
        # float16's narrow range needs the loss scaled (bf16 has float32's range and needs none).
        return torch.amp.GradScaler("cuda") if self.settings.amp_dtype == "float16" else None

    def forward_context(self, device):
        dtype = torch.float16 if self.settings.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype)

    @classmethod
    def assess(cls, row):
        speed, memory = row.tokens_per_second_ratio, row.peak_memory_ratio
        own = f"tokens/s {speed:.2f}x, peak memory {memory:.2f}x"
        factors = [Factor("speed (tokens/s)", speed, 2),
                   Factor("peak memory (the baseline's over this row's)", 1.0 / memory if memory else math.nan, 2)]
        return own, judge(factors, row.test_perplexity_change_percent, noise_percent=row.perplexity_noise_percent)
