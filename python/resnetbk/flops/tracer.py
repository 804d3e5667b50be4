"""Measuring FLOPs from execution: a ``TorchDispatchMode`` records every op that runs.

Each aten op (and the BK-Core custom ops, which appear as themselves) is recorded with its
input/output shapes, whether it is complex, the module it ran in (``ModuleTracker``, forward and
backward) and the phase; identical records are merged with a count. The optimizer phase is
recorded per parameter group (kind, parameter shapes, weight decay) and priced per parameter
element by the engine. ``report()`` hands the trace to the Rust engine (``resnetbk._native``).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from .. import _native

OUTSIDE_MODULES = "(outside modules)"


def _shapes(tree) -> tuple:
    leaves, _ = tree_flatten(tree)
    return tuple(tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor))


def _complex(tree) -> bool:
    leaves, _ = tree_flatten(tree)
    return any(isinstance(t, torch.Tensor) and t.is_complex() for t in leaves)


def optimizer_kind(optimizer: torch.optim.Optimizer, group: dict) -> str:
    """The engine's name for an optimizer's update rule (unknown classes stay unknown)."""
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd_momentum" if group.get("momentum", 0) else "sgd"
    return type(optimizer).__name__.lower()


class FlopsTracer(TorchDispatchMode):
    """Records executed ops; use as a context manager around forward and backward, and
    ``tracer.optimizer_step(opt)`` for the update."""

    def __init__(self):
        super().__init__()
        self.records: Counter = Counter()
        self._modules = ModuleTracker()
        self._optimizer = False

    def __enter__(self):
        self._modules.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._modules.__exit__(*exc)
        return result

    def _component(self) -> str:
        paths = [p for p in self._modules.parents if p != "Global"]
        if not paths:
            return OUTSIDE_MODULES
        deepest = max(paths, key=lambda p: p.count("."))
        root, _, rest = deepest.partition(".")
        return rest or root

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._optimizer:  # priced per parameter by optimizer_step
            return out
        packet = func.overloadpacket
        name = f"{func.namespace}.{packet.__name__}"
        detail = ""
        if func.namespace == "resnetbk":  # the mode argument decides the per-element cost
            detail = next((a for a in args if a in ("causal", "bidirectional")), "")
        phase = "backward" if self._modules.is_bw else "forward"
        key = (name, _shapes((args, kwargs)), _shapes(out), _complex(args), detail, phase, self._component())
        self.records[key] += 1
        return out

    @contextmanager
    def _optimizer_phase(self):
        self._optimizer = True
        try:
            yield
        finally:
            self._optimizer = False

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs ``optimizer.step()`` and records one update per parameter group."""
        with self._optimizer_phase():
            optimizer.step()
        for group in optimizer.param_groups:
            shapes = tuple(tuple(p.shape) for p in group["params"] if p.grad is not None)
            if shapes:
                kind = f"optimizer.{optimizer_kind(optimizer, group)}"
                decay = "weight_decay" if group.get("weight_decay", 0) else ""
                self.records[(kind, shapes, (), False, decay, "optimizer", "optimizer")] += 1

    def trace(self) -> list:
        """The records as the engine takes them."""
        return [
            (name, [list(s) for s in ins], [list(s) for s in outs], cplx, detail, phase, component, count)
            for (name, ins, outs, cplx, detail, phase, component), count in self.records.items()
        ]

    def report(self) -> dict:
        """The priced trace: totals by phase, category, component and op, and unknown ops."""
        return _native.price_trace(self.trace())
