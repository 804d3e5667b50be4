"""A method's own evaluation: a bounded slice of the validation split, traced for FLOPs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch

from ..flops import FlopsTracer, component_summary


def record_evaluation(state, *, blocks: bool = False, components: bool = False,
                      per_window: Optional[dict[str, Callable]] = None, tokens=None) -> dict:
    """Perplexity and forward FLOPs per token on the first ``method_eval_tokens`` validation tokens,
    plus (optionally) mean blocks per token and the fraction of tokens at each depth
    (``depth_fractions[k]``: the share that ran k blocks), forward FLOPs per token by component, and for each
    ``name -> fn`` of ``per_window`` the mean of ``fn(model)`` after each window (a method's own
    figure, e.g. realised sparsity). ``tokens``: another slice of the validation split to read
    (its first ``method_eval_tokens``) instead of the split's beginning."""
    model = state.model
    tracer = FlopsTracer()
    totals = {"blocks": 0.0, "positions": 0, "windows": 0, "depths": None}
    per_window = per_window or {}
    sums = dict.fromkeys(per_window, 0.0)

    def on_batch(positions: int) -> None:
        totals["positions"] += positions
        totals["windows"] += 1
        if blocks:
            totals["blocks"] += float(model.depth.blocks_per_token.float().sum()) if model.depth is not None else (
                model.options.n_layers * positions)
            if model.depth is not None:
                counts = depth_counts(model.depth.blocks_per_token, model.options.n_layers)
                totals["depths"] = counts if totals["depths"] is None else totals["depths"] + counts
        for name, fn in per_window.items():
            sums[name] += fn(model)

    nll, count = state.evaluate(state.corpus.valid if tokens is None else tokens,
                                max_tokens=state.config.method_eval_tokens, tracer=tracer, on_batch=on_batch)
    report = tracer.report()
    forward = report["by_phase"].get("forward", 0)
    # The blocks alone (and the methods' own modules), without the embeddings and the LM head,
    # which dominate a step at small d_model and hide what a method changes inside the stack.
    blocks_flops = sum(p.get("forward", 0) for c, p in report["by_component"].items()
                       if c.split(".")[0] in ("blocks", "depth", "shortened"))
    figures = {"split": "valid", "tokens": count, "perplexity": math.exp(nll),
               "forward_flops_per_token": forward / max(count, 1),
               "blocks_forward_flops_per_token": blocks_flops / max(count, 1)}
    if blocks:
        figures["mean_blocks_per_token"] = totals["blocks"] / max(totals["positions"], 1)
        if totals["depths"] is not None:
            figures["depth_fractions"] = depth_fractions(totals["depths"])
    for name, total in sums.items():
        figures[name] = total / max(totals["windows"], 1)
    if components:
        figures["forward_flops_per_token_by_component"] = {
            name: value["forward"] / max(count, 1)
            for name, value in component_summary(report["by_component"], 1).items() if value.get("forward")
        }
    return figures


def depth_counts(blocks_per_token, n_layers: int):
    """How many tokens ran 0, 1, ..., ``n_layers`` blocks (a tensor on the model's device: no host sync)."""
    depths = blocks_per_token.detach().flatten().round().long()
    # index_add_, not bincount: bincount reads its input's range back to the host on CUDA.
    return torch.zeros(n_layers + 1, dtype=torch.long, device=depths.device).index_add_(
        0, depths, torch.ones_like(depths))


def depth_fractions(counts) -> list:
    """``depth_counts`` as fractions of the tokens counted."""
    total = max(float(counts.sum()), 1.0)
    return [float(c) / total for c in counts.tolist()]
