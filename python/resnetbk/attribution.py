"""Where the FLOPs tracer books the ops running now: ``priced_as`` overrides the phase and/or the
component for a block of code (work done early on behalf of another phase, or outside the module
it belongs to).

Standard library only, so that any module (the models, the tracer) can import it without import
cycles. The override lives in a ``ContextVar``: it is per thread (and per asyncio task), and a
``priced_as`` block restores exactly what was there before, even when it raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Optional

#: ``priced_as(component=THE_MODULE)``: back to the module the op runs in (inside an override).
THE_MODULE = "(the module)"

#: (phase, component) set by the innermost ``priced_as``; None: not overridden.
_OVERRIDE: ContextVar[tuple] = ContextVar("resnetbk_priced_as", default=(None, None))


@contextmanager
def priced_as(*, phase: Optional[str] = None, component: Optional[str] = None) -> Iterator[None]:
    """Attribute the ops run inside to ``phase`` and/or ``component`` in any active tracer: for
    work done early on behalf of another phase (a fused loss computes its gradient during the
    forward) or outside the module it belongs to. An argument left out keeps the enclosing
    block's choice; ``component=THE_MODULE`` goes back to the module the op runs in. Costs
    nothing when no tracer is active."""
    outer_phase, outer_component = _OVERRIDE.get()
    token = _OVERRIDE.set((outer_phase if phase is None else phase,
                           outer_component if component is None else component))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def current_override() -> tuple:
    """``(phase, component)`` of the innermost ``priced_as`` active here; None where the tracer
    decides (the phase autograd runs in, the module the op runs in)."""
    phase, component = _OVERRIDE.get()
    return phase, (None if component == THE_MODULE else component)


__all__ = ["THE_MODULE", "current_override", "priced_as"]
