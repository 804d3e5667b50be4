"""The loop's named events, and what listens to them.

Modelled on MosaicML Composer's events and algorithms, kept small. The loop (``train.loop``)
fires each ``Event`` at a fixed place; a ``Listener`` acts on it through a handler named
``on_<event>``. The optimization methods (``resnetbk.methods``) are listeners, and so is every
measurement the loop makes (FLOPs tracing, throughput, the step CSV, progress:
``train.listeners``). A handler name that is no event is an error when its class is defined,
so a misspelt handler cannot silently never fire.
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any, ClassVar, Optional

import torch


class Event(str, Enum):
    """The hook points, in the order the loop reaches them."""

    MODEL_BUILT = "model_built"  # the model exists, before the optimizer; state.model, state.device
    EPOCH_START = "epoch_start"  # state.window_order may be replaced (curriculum, active learning)
    BATCH_START = "batch_start"  # state.inputs, state.targets of the step
    LOSS = "loss"  # after the forward: add named terms to state.loss_terms (state.hidden, state.targets, state.aux_losses)
    AFTER_BACKWARD = "after_backward"  # gradients exist, before clipping
    AFTER_OPTIMIZER_STEP = "after_optimizer_step"  # a step that was taken (not skipped)
    STEP_END = "step_end"  # after every step, taken or skipped (state.step_record)
    EPOCH_END = "epoch_end"  # after validation (state.epoch_valid_perplexity)
    EVALUATION = "evaluation"  # after the final test evaluation: a method's own evaluations
    EXPORT = "export"  # last: the model as it will be reported (sizes, exported files)


EVENT_NAMES = frozenset(e.value for e in Event)


class Listener:
    """Acts at the loop's events through ``on_<event>(state)`` handlers.

    ``order`` settles who runs first where it matters (lower first; equal orders keep the order
    the listeners were given): measurement that must see a step before the methods change it
    runs below 0, exporting after every method's EXPORT contribution above it."""

    order: ClassVar[int] = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in vars(cls):
            if name.startswith("on_") and name[3:] not in EVENT_NAMES:
                raise TypeError(f"{cls.__name__}.{name}: no event is called {name[3:]!r}; handlers are on_<event> "
                                f"for the events {', '.join(sorted(EVENT_NAMES))}")

    def run(self, event: Event, state: Any) -> None:
        handler = getattr(self, f"on_{event.value}", None)
        if handler is not None:
            handler(state)

    def forward_context(self, device: torch.device) -> Optional[contextlib.AbstractContextManager]:
        """A context wrapped around every forward (training and evaluation), or None."""
        return None

    def grad_scaler(self, device: torch.device) -> Optional[torch.amp.GradScaler]:
        """The GradScaler this listener needs (float16 autocast), or None."""
        return None

    def epoch_windows(self, windows: int) -> int:
        """How many of an epoch's ``windows`` the run trains on (the schedule's length)."""
        return windows

    def best_from_step(self, total_steps: int) -> int:
        """The first step after which an epoch's weights may be kept as the best (a method whose
        own schedule changes the model, pruning or quantization, is judged on the model it
        makes, not on one from before it)."""
        return 0

    def close(self) -> None:
        """Called once when the loop ends, however it ends (files to close)."""


class Listeners:
    """The listeners of one run, in their ``order``, and the loop's way to reach all of them."""

    def __init__(self, listeners):
        self.listeners = sorted(listeners, key=lambda listener: listener.order)

    def __iter__(self):
        return iter(self.listeners)

    def fire(self, event: Event, state: Any) -> None:
        for listener in self.listeners:
            listener.run(event, state)

    @contextlib.contextmanager
    def forward_context(self, device: torch.device):
        """Every listener's forward context at once (autocast, ...)."""
        with contextlib.ExitStack() as stack:
            for listener in self.listeners:
                context = listener.forward_context(device)
                if context is not None:
                    stack.enter_context(context)
            yield

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """The one GradScaler a listener asked for, else a disabled one (a plain backward and step)."""
        scalers = [s for s in (listener.grad_scaler(device) for listener in self.listeners) if s is not None]
        return scalers[0] if scalers else torch.amp.GradScaler("cuda", enabled=False)

    def epoch_windows(self, windows: int) -> int:
        return min([listener.epoch_windows(windows) for listener in self.listeners], default=windows)

    def best_from_step(self, total_steps: int) -> int:
        return max([listener.best_from_step(total_steps) for listener in self.listeners], default=0)

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
