"""What every optimization method is: a declaration and handlers for named events of the loop.

Modelled on MosaicML Composer's algorithms and events, kept small. A method

* declares its ``flag`` (its name in the config: ``methods.<flag>``), the original benchmark's
  ``claim`` for it (verbatim), what it ``acts_on``, the ``paper`` it follows, its
  ``hyperparameters`` (names and defaults; ``validate`` checks them) and the architectures it
  supports. From these its frozen ``Settings`` class is made: ``enabled`` (default ``default``)
  and the hyper-parameters; a run's instance is ``config.methods[flag]`` (``self.settings``);
* may change the model before it is built (``configure_model``: the same options feed
  ``build_model`` and the FLOPs estimate) or once built (``attach``: parametrizations, hooks),
  and wrap the forward (``forward_context``);
* acts during training only through handlers named ``on_<event>`` for the loop's events
  (``resnetbk.train.events``: a method is a ``Listener``; a handler name that is no event is an
  error when the class is defined);
* records its own measurements in ``state.figures[flag]`` (written to the results under
  ``methods``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from typing import Any, ClassVar, Optional

from ..train.events import Event, Listener
from ..validate import check_int, check_number


@dataclass
class AblationRow:
    """One row of the ablation (``resnetbk.bench.ablation``): a run measured against the baseline
    run, what a method's ``assess`` reads. Ratios are the row's figure over the baseline's;
    ``figures`` are the method's own measurements (``results.methods[flag]``)."""

    row: str = ""
    model_name: str = ""
    flags: list = field(default_factory=list)
    claim: str = "-"
    valid_perplexity: float = math.nan
    test_perplexity: float = math.nan
    valid_perplexity_change_percent: float = math.nan
    test_perplexity_change_percent: float = math.nan
    tokens_per_second: float = math.nan
    tokens_per_second_ratio: float = math.nan
    forward_flops_ratio: float = math.nan
    backward_flops_ratio: float = math.nan
    peak_memory_ratio: float = math.nan
    model_size_ratio: float = math.nan
    causal: Optional[bool] = None
    steps: int = 0
    figures: dict = field(default_factory=dict)
    forward_flops_by_component: dict = field(default_factory=dict)
    baseline_forward_flops_by_component: dict = field(default_factory=dict)
    bk_op: dict = field(default_factory=dict)  # the BK op timed in the ablation's process
    valid_curve: list = field(default_factory=list)
    baseline_valid_curve: list = field(default_factory=list)
    flops_per_step: Optional[float] = None
    baseline_flops_per_step: Optional[float] = None
    context_reach: Optional[dict] = None
    baseline_context_reach: Optional[dict] = None
    #: The baseline's test perplexity's seed standard deviation in percent, for an ablation run
    #: over seeds (``methods.verdict``: the allowed margin is twice it, at least 2%). The ablation
    #: runs one seed today and leaves it None: the margin is 2%.
    perplexity_noise_percent: Optional[float] = None


class Method(Listener):
    flag: ClassVar[str]
    claim: ClassVar[str]
    acts_on: ClassVar[str]
    paper: ClassVar[str]
    #: True for the original benchmark's twelve (``claim`` quoted from it); False for this package's own.
    original: ClassVar[bool] = True
    default: ClassVar[bool] = False  # the flag's default in the config
    architectures: ClassVar[tuple] = ("resnet_bk",)
    hyperparameters: ClassVar[dict] = {}  # config field -> default value
    incompatible_with: ClassVar[tuple] = ()  # flags that cannot be on together with this one
    #: False for methods that change only the training procedure (data, order, autocast), not the model.
    changes_model: ClassVar[bool] = True
    #: Which form of the method this is: raised when what it does changes, so that ``--resume``
    #: reruns a finished run of an older form (a results file without it had form 1).
    version: ClassVar[int] = 1
    #: True for a method that acts on the BK-Core mixer (an error with the no_mixer control).
    needs_mixer: ClassVar[bool] = False
    #: Flags whose ``attach`` must run before this one's when both are on (the order where it matters).
    attach_after: ClassVar[tuple] = ()
    #: Whether the closed-form FLOPs estimate (``flops.estimate``) still describes the model: false
    #: for a method that changes what a step executes beyond the base options.
    estimable: ClassVar[bool] = False

    #: Made from ``default`` and ``hyperparameters`` when the class is defined (a frozen dataclass).
    Settings: ClassVar[type]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "flag" in vars(cls):  # a method (not an intermediate base): its settings class
            cls.Settings = _settings_class(cls)

    def __init__(self, config: Any):
        self.config = config
        self.settings = config.methods[self.flag]

    @classmethod
    def settings_of(cls, config: Any):
        """This method's settings in ``config`` (``config.methods[flag]``)."""
        return config.methods[cls.flag]

    @classmethod
    def validate(cls, config: Any) -> None:
        """Raise ValueError naming the field for a bad hyper-parameter value."""

    @classmethod
    def configure_model(cls, options, config: Any):
        """The model options with this method's changes (``options`` is a frozen ``ModelOptions``)."""
        return options

    @classmethod
    def attach(cls, model, config: Any) -> None:
        """Change the built model in place through its extension points (``models.common``):
        attached modules, parametrizations, hooks. ``methods.attach_all`` calls it for every
        enabled method (``attach_after`` first), before the optimizer exists and before a
        checkpoint is loaded."""

    @classmethod
    def assess(cls, row: AblationRow) -> tuple:
        """The ablation's verdict on the original claim from one measured row (see
        ``resnetbk.bench.ablation``): ``(own figure as words, verdict as words)``."""
        return "-", "not assessed"

    @classmethod
    def windows_per_epoch(cls, config: Any, windows: int) -> int:
        """How many of an epoch's ``windows`` this method trains on (the schedule's length)."""
        return windows

    def epoch_windows(self, windows: int) -> int:
        return self.windows_per_epoch(self.config, windows)


def _settings_class(method: type) -> type:
    """``<Method>.Settings``: ``enabled`` and the hyper-parameters, frozen (lists become tuples)."""
    fields = [("enabled", bool, field(default=method.default))]
    for name, default in method.hyperparameters.items():
        if isinstance(default, list):
            default = tuple(default)
        fields.append((name, type(default), field(default=default)))
    settings = make_dataclass("Settings", fields, frozen=True)
    # Importable by pickle (a config travels to each model's worker process): <module>.<Method>.Settings.
    settings.__module__, settings.__qualname__ = method.__module__, f"{method.__qualname__}.Settings"
    settings.__doc__ = f"The settings of {method.flag}: enabled, then its hyper-parameters ({method.__name__})."
    return settings


__all__ = ["AblationRow", "Event", "Method", "check_int", "check_number"]
