"""One training step: forward, loss, backward, clipping, the optimizer's update.

The one implementation the loop, the scaling study and the speed benchmarks all run. The loss is
the mean next-token NLL over the global batch plus the MoE routers' load balancing (part of
ResNet-BK itself) and whatever named terms ``on_loss`` adds (the methods' losses). A step whose
loss or gradient is not finite is skipped (no update) and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from torch.profiler import record_function

from .. import data as wt2
from .distributed import SINGLE, World


@dataclass
class StepOutcome:
    taken: bool  # False: the loss or the gradient was not finite, and no update was made
    nll_sum: float  # the summed NLL over the global batch's targets (NaN when not taken)
    tokens: int  # the global batch's targets that are not ignored
    total_loss: float  # the loss that was backpropagated (NLL mean plus every term)
    grad_norm: float  # before clipping (NaN without clipping or when not finite)
    terms: dict  # the named loss terms, weighted as added


def train_step(model, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor, *,
               forward: Optional[torch.nn.Module] = None, world: World = SINGLE,
               scaler: Optional[torch.amp.GradScaler] = None, grad_clip: Optional[float] = None,
               load_balance_weight: float = 0.0, fused_head: bool = True,
               context: Callable[[], AbstractContextManager] = nullcontext, tracer=None,
               on_loss: Optional[Callable[[torch.Tensor, dict, dict], None]] = None,
               on_backward: Optional[Callable[[], None]] = None) -> StepOutcome:
    """One optimizer step of ``model`` on ``inputs``/``targets`` (already on the model's device).

    ``forward``: the module to call (a DistributedDataParallel wrapper; default ``model``);
    ``context()`` wraps the forward (autocast); ``tracer`` (a FlopsTracer) prices forward,
    backward and the update; ``on_loss(hidden, aux_losses, terms)`` may add named terms to
    ``terms``; ``on_backward()`` runs once the gradients exist, before clipping."""
    forward = forward if forward is not None else model
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
    (tokens,) = world.sum([int((targets != wt2.IGNORE_INDEX).sum())])
    optimizer.zero_grad(set_to_none=True)
    # The phases are named for torch.profiler (``python -m resnetbk.bench step`` reads them).
    with tracer if tracer is not None else nullcontext():
        with context(), record_function("step.forward"):
            nll_sum, hidden = forward(inputs, targets, fused_head=fused_head)
            # Normalised by the global token count (times the world size, which DDP's gradient
            # averaging divides out): exactly the gradient of the global batch's mean NLL.
            loss = nll_sum * (world.size / max(tokens, 1))
            aux = model.aux_losses()
            terms = {"load_balance": load_balance_weight * aux["load_balance"]} if "load_balance" in aux else {}
            if on_loss is not None:
                on_loss(hidden, aux, terms)
            for term in terms.values():
                loss = loss + term.to(loss.device)
        finite = world.all(bool(torch.isfinite(loss)))
        if finite:
            with record_function("step.backward"):
                scaler.scale(loss).backward()
    grad_norm = math.nan
    if finite:
        if on_backward is not None:
            on_backward()
        if grad_clip is not None:
            with record_function("step.clip"):
                scaler.unscale_(optimizer)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
            finite = world.all(math.isfinite(grad_norm))
    values = {k: float(v.detach()) for k, v in terms.items()}
    outcome = StepOutcome(taken=finite, nll_sum=math.nan, tokens=tokens, total_loss=float(loss.detach()),
                          grad_norm=grad_norm, terms=values)
    if finite:
        with record_function("step.optimizer"):
            if tracer is not None:
                tracer.optimizer_step(optimizer, lambda: scaler.step(optimizer))
            else:
                scaler.step(optimizer)
            scaler.update()
        (outcome.nll_sum,) = world.sum([nll_sum.item()])
    return outcome
