"""What each of the training step's speed changes is worth: ``python benches/step_changes.py``

The step at the original shape (batch 32, N 128, d 64, 4 layers, WikiText-2's vocabulary,
float32), with every change on, then with each one switched off in turn (leave one out), in one
process, the variants interleaved round by round so that the machine's drift hits them alike.
Prints the median ms per step and each change's own gain (its variant's time over all-on).

- ``head kernel``: the LM head's blocks through torch's ops instead of the Rust kernel
  (``models.head.use_kernel``);
- ``head 32-row blocks``: the landed block size (8 MiB of logits: 32 rows) instead of 192;
- ``attention kernel``: the Transformer's attention through torch's ops
  (``transformer.causal_attention_with_dropout``, same masks) instead of the Rust kernel
  (``models.attention.use_kernel``);
- ``dropout kernel``: torch's dropout (``models.dropout.use_kernel``; the attention then runs
  ``scaled_dot_product_attention`` with its own dropout);
- ``fused AdamW``: torch's per-tensor loop instead of its fused kernel.

Not switchable in one process, and measured elsewhere: libgomp's spin count
(``benches/omp_wait_policy.py``) and the torch scan's renormalisation outside autograd (the
BK-Core's ``grad="autograd"`` forward+backward at 32 x 128: 5.1 -> 2.8 ms per layer).
"""

from __future__ import annotations  # noqa: I001 (resnetbk loads before torch, below)

import statistics
import sys
import time
from contextlib import contextmanager
from unittest import mock

import resnetbk  # noqa: F401  (before torch: the package's OpenMP spin count applies)
import torch

from resnetbk.bench.config import BenchmarkConfig, model_config
from resnetbk.bench.recipe import make_model
from resnetbk.models import ModelOptions
from resnetbk.models import attention as attention_module
from resnetbk.models import dropout as dropout_module
from resnetbk.models import head as head_module
from resnetbk.train import optim
from resnetbk.train.step import train_step

VOCAB = 33_278
MODELS = ("transformer_baseline", "resnet_bk_baseline")


@contextmanager
def switched_off(change: str):
    patches = {
        "all on": [],
        "head kernel": [mock.patch.object(head_module, "use_kernel", False)],
        "head 32-row blocks": [mock.patch.object(head_module, "block_rows", lambda vocab: 32)],
        "attention kernel": [mock.patch.object(attention_module, "use_kernel", False)],
        "dropout kernel": [mock.patch.object(dropout_module, "use_kernel", False)],
        "fused AdamW": [mock.patch.object(optim, "_fusable", lambda model: False)],
    }[change]
    for p in patches:
        p.start()
    try:
        yield
    finally:
        for p in patches:
            p.stop()


CHANGES = ("all on", "head kernel", "head 32-row blocks", "attention kernel", "dropout kernel", "fused AdamW")


def main(rounds: int = 3, steps: int = 4) -> None:
    print(f"ms per step (median of {rounds} rounds x {steps} steps), {torch.get_num_threads()} threads")
    for name in MODELS:
        config = model_config(name, BenchmarkConfig(model=ModelOptions(d_model=64, n_layers=4, n_seq=128),
                                                    batch_size=32, device="cpu"))
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randint(VOCAB, (32, 128), generator=gen), torch.randint(VOCAB, (32, 128), generator=gen)
        variants = {}
        for change in CHANGES:
            with switched_off(change):
                torch.manual_seed(0)
                model = make_model(config, VOCAB).train()
                variants[change] = (model, optim.make_optimizer(model, config))
        times = {change: [] for change in CHANGES}
        for _ in range(rounds):
            for change in CHANGES:
                model, optimizer = variants[change]
                with switched_off(change):
                    for i in range(steps + 1):
                        start = time.perf_counter()
                        train_step(model, optimizer, x, y, grad_clip=config.grad_clip,
                                   load_balance_weight=config.load_balance_weight)
                        if i:  # the first of each round warms up
                            times[change].append(time.perf_counter() - start)
        base = statistics.median(times["all on"])
        print(f"\n{name}")
        print("| switched off | ms per step | its own gain |")
        print("|---|---|---|")
        for change in CHANGES:
            seconds = statistics.median(times[change])
            gain = "" if change == "all on" else f"{seconds / base:.2f}x"
            print(f"| {change} | {1000 * seconds:.1f} | {gain} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
