"""Evaluation: the mean next-token NLL of a model over a split, window by window.

One implementation for every caller: validation and test in the loop, the methods' own
evaluations, active learning's scoring of the training windows (``window_nlls``) and INT8
inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch

from .. import data as wt2


def window_nlls(model, windows: Iterable, device: torch.device, *, fused_head: bool = True,
                context: Callable[[], AbstractContextManager] = nullcontext,
                tracer_for: Optional[Callable[[torch.Tensor], Optional[AbstractContextManager]]] = None
                ) -> Iterator[tuple[float, int, torch.Tensor]]:
    """For each window ``(x, y)``: the summed NLL over its targets that are not ignored, their
    count, and ``x``; in evaluation mode, without gradients (the model's mode comes back after).
    ``context()`` wraps each forward (the methods' autocast); ``tracer_for(x)`` may return a
    FLOPs tracer to record that window's forward."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in windows:
                x, y = x.contiguous(), y.contiguous()  # torch's quantized embedding needs contiguous ids
                tracer = tracer_for(x) if tracer_for is not None else None
                with tracer if tracer is not None else nullcontext(), context():
                    nll_sum, _ = model(x.to(device), y.to(device), fused_head=fused_head)
                yield nll_sum.item(), int((y != wt2.IGNORE_INDEX).sum()), x
    finally:
        model.train(was_training)


def evaluate(model, tokens: torch.Tensor, config: Any, device: torch.device, *,
             context: Callable[[], AbstractContextManager] = nullcontext, max_tokens: Optional[int] = None,
             tracer=None, on_batch: Optional[Callable[[int], None]] = None) -> tuple[float, int]:
    """Mean NLL per token over every (token, next token) pair of ``tokens`` (or its first
    ``max_tokens``), and their count, in windows of ``config.model.n_seq`` over ``config.eval_batch_size``
    streams. ``tracer`` (a FlopsTracer) records the forwards, ``on_batch(positions)`` runs after
    each window. A carried LSTM state (``config.carry_state``) runs through the split in text
    order from a fresh state; the training stream's state comes back afterwards."""
    if max_tokens is not None:
        tokens = wt2.limit_tokens(tokens, max(2, max_tokens))
    inputs, targets = wt2.streams(tokens, config.eval_batch_size)
    total, count = 0.0, 0
    with model.state_carry(config.carry_state):
        windows = wt2.windows(inputs, targets, config.model.n_seq)
        for nll_sum, n, x in window_nlls(model, windows, device, fused_head=config.fused_head, context=context,
                                         tracer_for=None if tracer is None else lambda _: tracer):
            total, count = total + nll_sum, count + n
            if on_batch is not None:
                on_batch(x.numel())
    return total / max(count, 1), count


def eval_windows(tokens: torch.Tensor, config: Any) -> int:
    """How many windows ``evaluate`` runs over ``tokens`` (for a progress bar)."""
    length = -(-max(len(tokens) - 1, 1) // config.eval_batch_size)  # as wt2.streams cuts it
    return -(-length // config.model.n_seq)
