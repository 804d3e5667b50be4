"""The optimizer and the learning-rate schedule of a run.

AdamW (weight decay per ``models.parameter_groups``) or plain SGD (the word_language_model
example's); the cosine schedule from ``lr`` to ``lr * min_lr_ratio`` with optional linear
warmup, stepped after every optimizer step, or the plateau schedule, stepped after every epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..models.parameter_groups import parameter_groups


def make_optimizer(model: torch.nn.Module, config: Any) -> torch.optim.Optimizer:
    """``config.optimizer``: AdamW, or plain SGD (no momentum), over ``parameter_groups``.

    AdamW runs torch's fused implementation where every parameter allows it (floating point, on
    a CPU or a CUDA GPU): one kernel over all tensors instead of a Python loop of ~10 ops per
    tensor, the same update to float32 rounding (measured at the benchmark's ResNet-BK: 13.0 ->
    2.0 ms per step on 2 cores, parameters within 1.5e-8 of the loop's after two steps)."""
    groups = parameter_groups(model, config.decay_norms_biases_embeddings, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr, fused=_fusable(model))


def _fusable(model: torch.nn.Module) -> bool:
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())


def make_scheduler(optimizer: torch.optim.Optimizer, config: Any, total_steps: int):
    """``config.lr_schedule``: "cosine" is stepped after every optimizer step; "plateau" after every
    epoch with the validation loss (lr times ``plateau_factor`` when it did not improve; no
    threshold: an epoch that is not strictly better counts, as in the word_language_model example)."""
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                          patience=0, threshold=0.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, config.warmup_steps, config.min_lr_ratio))


def steps_per_step(scheduler) -> bool:
    """Whether ``scheduler`` is stepped after every optimizer step (else after every epoch)."""
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def lr_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then a cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
