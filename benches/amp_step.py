"""Mixed precision's speed, side by side: ``python benches/amp_step.py [rounds] [steps]``

The ResNet-BK baseline's training step at the original shape (batch 32, N 128, d 64, 4 layers,
WikiText-2's vocabulary of 33,278, random tokens), in float32 and under bf16 autocast (the
``use_mixed_precision`` method's forward; the BK-Core stays float32), in one process, the two
interleaved round by round so that the machine's drift hits them alike. Prints JSON: the median
ms per step and tokens/s of each, their ratio, and every round. The ablation's rows run one
after another and their throughput may overlap other work; this is the clean comparison.
"""

from __future__ import annotations  # noqa: I001 (resnetbk loads before torch, below)

import json
import statistics
import sys
import time

import resnetbk  # noqa: F401
import torch

from resnetbk.bench.config import PRESETS, BenchmarkConfig
from resnetbk.hardware import slow_bf16_reason
from resnetbk.models import ModelOptions, build_model
from resnetbk.train.optim import make_optimizer
from resnetbk.train.step import train_step


def main(rounds: int = 5, steps: int = 8) -> dict:
    config = BenchmarkConfig.from_dict(PRESETS["epoch"])
    torch.manual_seed(0)
    model = build_model(ModelOptions(vocab_size=33278, d_model=64, n_layers=4, n_seq=128))
    optimizer = make_optimizer(model, config)
    x, y = torch.randint(0, 33278, (32, 128)), torch.randint(0, 33278, (32, 128))
    contexts = {"float32": lambda: torch.autocast("cpu", enabled=False),
                "bf16 autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}

    def run(name: str, n: int) -> None:
        for _ in range(n):
            train_step(model, optimizer, x, y, context=contexts[name], load_balance_weight=config.load_balance_weight,
                       grad_clip=config.grad_clip)

    times = {name: [] for name in contexts}
    for name in contexts:
        run(name, 3)  # warm-up
    for _ in range(rounds):
        for name in contexts:
            started = time.perf_counter()
            run(name, steps)
            times[name].append((time.perf_counter() - started) / steps)
    median = {name: statistics.median(v) for name, v in times.items()}
    return {"ms_per_step": {k: 1000 * v for k, v in median.items()},
            "tokens_per_second": {k: x.numel() / v for k, v in median.items()},
            "bf16_over_float32_speed": median["float32"] / median["bf16 autocast"],
            "rounds_ms": {k: [1000 * t for t in v] for k, v in times.items()},
            "threads": torch.get_num_threads(), "native_bf16": slow_bf16_reason() is None}


if __name__ == "__main__":
    print(json.dumps(main(*map(int, sys.argv[1:3])), indent=1))
