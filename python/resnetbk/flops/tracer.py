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
from torch.utils.module_tracker import ModuleTracker

from .. import _native

OUTSIDE_MODULES = "(outside modules)"

#: Set by ``priced_as``: the phase and component the ops running now are attributed to.
_ATTRIBUTION: dict = {}
#: ``priced_as(component=THE_MODULE)``: back to the module the op runs in (inside an override).
THE_MODULE = "(the module)"


@contextmanager
def priced_as(*, phase: str | None = None, component: str | None = None):
    """Attribute the ops run inside to ``phase`` and/or ``component`` in any active tracer: for
    work done early on behalf of another phase (a fused loss computes its gradient during the
    forward) or outside the module it belongs to. Costs nothing when no tracer is active."""
    previous = dict(_ATTRIBUTION)
    if phase is not None:
        _ATTRIBUTION["phase"] = phase
    if component is not None:
        _ATTRIBUTION["component"] = component
    try:
        yield
    finally:
        _ATTRIBUTION.clear()
        _ATTRIBUTION.update(previous)


def _tensors(obj):
    """The tensors in nested tuples, lists and dicts (a plain walk: pytree is slower here)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _shapes(obj) -> tuple:
    return tuple(tuple(t.shape) for t in _tensors(obj))


def _complex(obj) -> bool:
    return any(t.is_complex() for t in _tensors(obj))


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
        return rest or "model (top level)"

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
        phase = _ATTRIBUTION.get("phase") or ("backward" if self._modules.is_bw else "forward")
        component = _ATTRIBUTION.get("component", THE_MODULE)
        if component == THE_MODULE:
            component = self._component()
        key = (name, _shapes((args, kwargs)), _shapes(out), _complex(args), detail, phase, component)
        self.records[key] += 1
        return out

    @contextmanager
    def _optimizer_phase(self):
        self._optimizer = True
        try:
            yield
        finally:
            self._optimizer = False

    def optimizer_step(self, optimizer: torch.optim.Optimizer, step=None) -> None:
        """Runs ``step()`` (default ``optimizer.step()``; e.g. a GradScaler's step) and records one
        update per parameter group."""
        with self._optimizer_phase():
            (step or optimizer.step)()
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

    def clear(self) -> None:
        self.records.clear()


def merge_reports(total: dict | None, report: dict) -> dict:
    """Adds ``report`` into ``total`` (nested dicts of counts)."""
    if total is None:
        return _deep_copy(report)

    def add(into: dict, more: dict) -> None:
        for k, v in more.items():
            if isinstance(v, dict):
                add(into.setdefault(k, {}), v)
            else:
                into[k] = into.get(k, 0) + v

    add(total, report)
    return total


def _deep_copy(d: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


def component_summary(by_component: dict, steps: int) -> dict:
    """FLOPs per step by readable component: ``blocks.<i>.<part>``, top-level modules, the loss
    (ops outside any module), the optimizer."""
    summary: dict = {}
    for component, phases in by_component.items():
        parts = component.split(".")
        key = ".".join(parts[:3]) if parts[0] == "blocks" else parts[0]
        if component == OUTSIDE_MODULES:
            key = "loss and other ops outside modules"
        into = summary.setdefault(key, {})
        for phase, flops in phases.items():
            into[phase] = into.get(phase, 0) + flops / max(steps, 1)
    return dict(sorted(summary.items()))
