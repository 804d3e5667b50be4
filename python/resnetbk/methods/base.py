"""What every optimization method is: a declaration and handlers for named events of the loop.

Modelled on MosaicML Composer's algorithms and events, kept small. A method

* declares its ``flag`` (the config field that turns it on), the original benchmark's ``claim``
  for it (verbatim), what it ``acts_on``, the ``paper`` it follows, its ``hyperparameters``
  (config fields with defaults; ``validate`` checks them) and the architectures it supports;
* may change the model before it is built (``configure_model``: the same options feed
  ``build_model`` and the FLOPs estimate) or once built (``attach``: parametrizations, hooks),
  and wrap the forward (``forward_context``);
* acts during training only through handlers named ``on_<event>`` for the events below, which
  the training loop fires at fixed places (``resnetbk.bench.train``);
* records its own measurements in ``state.figures[flag]`` (written to the results under
  ``methods``).
"""

from __future__ import annotations

import contextlib
from enum import Enum
from typing import Any, ClassVar, Optional


class Event(str, Enum):
    """The hook points, in the order the loop reaches them."""

    MODEL_BUILT = "model_built"  # the model exists, before the optimizer; state.model, state.device
    EPOCH_START = "epoch_start"  # state.window_order may be replaced (curriculum, active learning)
    BATCH_START = "batch_start"  # state.inputs, state.targets of the step
    LOSS = "loss"  # after the forward: add named terms to state.loss_terms (state.hidden, state.targets, state.aux_losses)
    AFTER_BACKWARD = "after_backward"  # gradients exist, before clipping
    AFTER_OPTIMIZER_STEP = "after_optimizer_step"
    EPOCH_END = "epoch_end"  # after validation (state.epoch_valid_perplexity)
    EVALUATION = "evaluation"  # after the final test evaluation: a method's own evaluations
    EXPORT = "export"  # last: the model as it will be reported (sizes, exported files)


class Method:
    flag: ClassVar[str]
    claim: ClassVar[str]
    acts_on: ClassVar[str]
    paper: ClassVar[str]
    implemented: ClassVar[bool] = True
    #: True for the original benchmark's twelve (``claim`` quoted from it); False for this package's own.
    original: ClassVar[bool] = True
    default: ClassVar[bool] = False  # the flag's default in the config
    architectures: ClassVar[tuple] = ("resnet_bk",)
    hyperparameters: ClassVar[dict] = {}  # config field -> default value
    incompatible_with: ClassVar[tuple] = ()  # flags that cannot be on together with this one
    #: False for methods that change only the training procedure (data, order, autocast), not the model.
    changes_model: ClassVar[bool] = True

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def validate(cls, config: Any) -> None:
        """Raise ValueError naming the field for a bad hyper-parameter value."""

    @classmethod
    def configure_model(cls, options, config: Any):
        """The model options with this method's changes (``options`` is a frozen ``ModelOptions``)."""
        return options

    @classmethod
    def attach(cls, model, config: Any) -> None:
        """Change the built model in place (parametrizations, hooks): ``make_model`` calls it for
        every enabled method, before the optimizer exists and before a checkpoint is loaded."""

    @classmethod
    def assess(cls, row: dict) -> tuple:
        """The ablation's verdict on the original claim from one measured row (see
        ``resnetbk.bench.ablation``): ``(own figure as words, verdict as words)``."""
        return "-", "not assessed"

    @classmethod
    def windows_per_epoch(cls, config: Any, windows: int) -> int:
        """How many of an epoch's ``windows`` this method trains on (the schedule's length)."""
        return windows

    def forward_context(self, device) -> Optional[contextlib.AbstractContextManager]:
        """A context wrapped around every forward (training and evaluation), or None."""
        return None

    def run(self, event: Event, state: Any) -> None:
        handler = getattr(self, f"on_{event.value}", None)
        if handler is not None:
            handler(state)


class NotYetImplemented(Method):
    """A flag of the original benchmark that this package does not implement yet: turning it on
    is a NotImplementedError (an accepted-but-ignored flag would make a result lie)."""

    implemented = False
    architectures = ()


# Shared checks for hyper-parameters (a ValueError that names the field).

def check_number(config: Any, name: str, *, low: float, high: float = float("inf"), low_open: bool = False,
                 high_open: bool = False) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name}: expected a number in {lo}{low}, {high}{hi}, got {value!r}")


def check_int(config: Any, name: str, *, low: int, expected: str) -> None:
    """An int (not a bool) of at least ``low``; else a ValueError naming the field and ``expected``."""
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
