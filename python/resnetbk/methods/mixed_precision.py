"""``use_mixed_precision``: the forward under autocast (bfloat16 on CPU, bfloat16 or float16 on CUDA).

What it does: every forward (training and evaluation) runs in ``torch.autocast`` with
``amp_dtype``; the BK-Core itself stays float32 (its inputs are cast up), float16 uses a
GradScaler (CUDA only).

Measured effect (``results/ablation_quick``: quick preset, 150 steps, 2 CPU threads): 1.16x
tokens/s and 1.51x peak memory against float32 on this AMD EPYC CPU (perplexity -0.3%): the
claim (2x speed, half the memory) is not borne out here. On CPUs without fast bf16 matmuls it
can be slower, not faster; GPUs not measured yet.

Paper: Micikevicius et al. 2018, "Mixed Precision Training"; bf16: Kalamkar et al. 2019.
"""

import torch

from .base import Method


class MixedPrecision(Method):
    flag = "use_mixed_precision"
    claim = "2x speed, 50% memory"
    acts_on = "the forward pass (autocast)"
    paper = "Micikevicius et al. 2018, Mixed Precision Training"
    changes_model = False
    architectures = ("resnet_bk", "transformer")

    def on_model_built(self, state) -> None:
        if self.config.amp_dtype == "float16" and state.device.type != "cuda":
            raise ValueError("amp_dtype: float16 autocast needs a CUDA device (it uses a GradScaler); use bfloat16 on CPU")

    def forward_context(self, device):
        dtype = torch.float16 if self.config.amp_dtype == "float16" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype)

    @classmethod
    def assess(cls, row):
        speed, memory = row["tokens_per_second_ratio"], row["peak_memory_ratio"]
        own = f"tokens/s {speed:.2f}x, peak memory {memory:.2f}x"
        held = speed >= 2 and memory <= 0.5
        return own, ("held" if held else
                     f"not borne out: {speed:.2f}x speed (claimed 2x), {memory:.2f}x peak memory (claimed 0.5x)")
