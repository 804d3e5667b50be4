"""Measuring FLOPs from execution: a ``TorchDispatchMode`` records every op that runs.

Each aten op (and the BK-Core custom ops, which appear as themselves) is recorded with its
input/output shapes, whether it is complex, the module it ran in and the phase; identical records
are merged with a count. The optimizer phase is recorded per parameter group (kind, parameter
shapes, weight decay) and priced per parameter element by the engine. ``report()`` hands the
trace to the Rust engine (``resnetbk._native``).

The module an op ran in: in the forward, the innermost module whose forward is running (global
module hooks keep a stack while the tracer is active). In the backward, the module whose forward
created the autograd node that runs the op: every node gets a sequence number from a per-thread
counter when it is created, the hooks note the counter whenever the innermost module changes, and
the running node's number (``torch._C._current_autograd_node()``) is looked up in that timeline.
So the deepest module wins, a module that returns its input (``nn.Dropout(0)``, ``nn.Identity``)
gets nothing of its neighbours' work, and nothing depends on the order of a set or on string
hashes. Ops of a gradient accumulation (``AccumulateGrad``) go to the module owning the parameter;
nodes created outside every module, or before the tracer was entered, to ``OUTSIDE_MODULES``.
``resnetbk.attribution.priced_as`` overrides the phase and/or the component for a block of code.
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_right
from collections import Counter
from contextlib import ExitStack, contextmanager

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

from .. import _native
from ..attribution import current_override

OUTSIDE_MODULES = "(outside modules)"
#: The component of the traced root module's own ops (outside its children).
TOP_LEVEL = "model (top level)"

_sequence_nr = torch._C._autograd._get_sequence_nr  # the next autograd node's number on this thread
_current_node = torch._C._current_autograd_node
_graph_task_id = torch._C._current_graph_task_id
#: The sequence number of the nodes that have none (AccumulateGrad: UINT64_MAX).
_NO_SEQUENCE_NR = 2**64 - 1


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
        self._optimizer = False
        # Module names as torch's ModuleTracker gives them (kept so that the figures stay
        # comparable): the first module seen (the traced root) by its class name, its submodules
        # by their path below it; the component is the name without the root's.
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._named: weakref.WeakSet = weakref.WeakSet()
        self._component_names: dict = {}  # name -> component
        self._depth = 0  # how many times this tracer is entered now
        self._hooks = None  # the module hooks' ExitStack while entered
        self._reset()

    def _reset(self) -> None:
        """The per-step attribution state, fresh (at every outermost enter)."""
        self._thread = threading.get_ident()  # the module hooks ignore forwards on other threads
        self._stack: list = []  # (module, component) of the forwards running, innermost last
        # The timeline: autograd nodes numbered from _starts[i] on were created in _creators[i].
        self._starts: list = [_sequence_nr()]
        self._creators: list = [OUTSIDE_MODULES]
        self._entered: dict = {}  # id(module) -> module: the modules whose forward ran
        self._owners: dict = {}  # id(parameter) -> (parameter, component of the first module entered holding it)

    def __enter__(self):
        if self._depth == 0:
            self._reset()
            with ExitStack() as hooks:  # unwound if anything below raises
                hooks.callback(register_module_forward_pre_hook(self._module_starts).remove)
                hooks.callback(register_module_forward_hook(self._module_ends, always_call=True).remove)
                super().__enter__()
                self._hooks = hooks.pop_all()
        else:
            super().__enter__()
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        try:
            return super().__exit__(*exc)
        finally:
            if self._depth == 0 and self._hooks is not None:
                hooks, self._hooks = self._hooks, None
                self._stack.clear()
                self._entered.clear()
                self._owners.clear()
                hooks.close()

    # Module names and the module stack.

    def _name(self, module) -> str:
        """``ModuleTracker._get_mod_name``: names ``module``'s submodules when it is first seen."""
        name = self._names.get(module)
        if name is None:
            name = self._names[module] = type(module).__name__
        if module not in self._named:
            for child_name, child in module.named_children():
                self._names[child] = f"{name}.{child_name}"
                self._name(child)
            self._named.add(module)
        return name

    def _component_name(self, name: str) -> str:
        component = self._component_names.get(name)
        if component is None:
            _, _, rest = name.partition(".")
            component = self._component_names[name] = rest or TOP_LEVEL
        return component

    def _created_in(self, component: str) -> None:
        """The autograd nodes created from now on are ``component``'s."""
        if self._creators[-1] == component:
            return
        sequence_nr = _sequence_nr()
        if self._starts[-1] == sequence_nr:  # no node since the last change
            self._creators[-1] = component
        else:
            self._starts.append(sequence_nr)
            self._creators.append(component)

    def _module_starts(self, module, args) -> None:
        if threading.get_ident() != self._thread:
            return
        component = self._component_name(self._name(module))
        self._stack.append((module, component))
        self._created_in(component)
        if id(module) not in self._entered:  # the first module entered that holds a parameter owns it
            self._entered[id(module)] = module
            for parameter in module._parameters.values():
                if parameter is not None and id(parameter) not in self._owners:
                    self._owners[id(parameter)] = (parameter, component)

    def _module_ends(self, module, args, output) -> None:
        if threading.get_ident() != self._thread:
            return
        stack = self._stack
        for i in range(len(stack) - 1, -1, -1):  # the innermost call of module (also if it raised)
            if stack[i][0] is module:
                del stack[i:]
                break
        else:
            return  # its forward started before the tracer was entered
        self._created_in(stack[-1][1] if stack else OUTSIDE_MODULES)

    # Which component an op is booked to.

    def _forward_component(self) -> str:
        return self._stack[-1][1] if self._stack else OUTSIDE_MODULES

    def _backward_component(self) -> str:
        """The module whose forward created the autograd node running now."""
        node = _current_node()
        if node is None:
            return OUTSIDE_MODULES
        sequence_nr = node._sequence_nr()
        if sequence_nr == _NO_SEQUENCE_NR:  # AccumulateGrad: the parameter's module
            variable = getattr(node, "variable", None)
            return self._owner(variable) if variable is not None else OUTSIDE_MODULES
        i = bisect_right(self._starts, sequence_nr) - 1
        return self._creators[i] if i >= 0 else OUTSIDE_MODULES  # i < 0: created before the enter

    def _owner(self, parameter) -> str:
        """The component of the first module entered (in this step) that holds ``parameter``."""
        held, component = self._owners.get(id(parameter), (None, OUTSIDE_MODULES))
        return component if held is parameter else OUTSIDE_MODULES

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # Priced per parameter by optimizer_step; torch.profiler's range markers are not work.
        if self._optimizer or func.namespace == "profiler":
            return out
        packet = func.overloadpacket
        name = f"{func.namespace}.{packet.__name__}"
        detail = ""
        if func.namespace == "resnetbk":  # the mode argument decides the per-element cost
            detail = next((a for a in args if a in ("causal", "bidirectional")), "")
        in_backward = _graph_task_id() != -1
        phase, component = current_override()
        phase = phase or ("backward" if in_backward else "forward")
        if component is None:
            component = self._backward_component() if in_backward else self._forward_component()
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
