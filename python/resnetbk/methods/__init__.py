"""The optimization methods, one module each, in one registry.

``REGISTRY`` lists the original benchmark's twelve in its order, then this package's own
(``original = False``: ``use_spectral_z``). Everything else derives from it: the config's flag
and hyper-parameter fields, what ``resnet_bk_full`` turns on (the original twelve), the CLI
help, the ablation's rows and the tests' parametrisation.
Adding a method: its module, its tests, and one line here.
"""

from __future__ import annotations

from .act import ACT
from .active_learning import ActiveLearning
from .analytic_gradient import AnalyticGradient
from .base import Event, Method
from .curriculum import Curriculum
from .early_exit import EarlyExit
from .export import Exporter
from .koopman import Koopman
from .mixed_precision import MixedPrecision
from .multi_scale import MultiScale
from .physics_informed import PhysicsInformed
from .pruning import Pruning
from .quantization import Quantization
from .sparse_bk import SparseBK
from .spectral_z import SpectralZ

REGISTRY: tuple = (
    AnalyticGradient, Koopman, PhysicsInformed, Quantization, Pruning, MixedPrecision, ACT, MultiScale, SparseBK,
    EarlyExit, Curriculum, ActiveLearning,
    SpectralZ,
)
BY_FLAG = {m.flag: m for m in REGISTRY}
FLAGS = tuple(BY_FLAG)
#: The original benchmark's twelve flags (what resnet_bk_full turns on).
ORIGINAL_FLAGS = tuple(m.flag for m in REGISTRY if m.original)


def default_settings() -> dict:
    """Flag -> that method's settings at their defaults: ``BenchmarkConfig.methods``' default."""
    return {m.flag: m.Settings() for m in REGISTRY}


def enabled(config) -> list:
    """The method classes whose flag is on in ``config``, in registry order."""
    return [m for m in REGISTRY if config.methods[m.flag].enabled]


def validate(config) -> None:
    """The settings' types, architectures, incompatible pairs, hyper-parameters."""
    unknown = sorted(set(config.methods) - set(BY_FLAG))
    if unknown:
        raise ValueError(f"methods: unknown method(s) {', '.join(unknown)}; known: {', '.join(FLAGS)}")
    for m in REGISTRY:
        settings = config.methods.get(m.flag)
        if not isinstance(settings, m.Settings):
            raise ValueError(f"methods.{m.flag}: expected its settings ({m.flag}.Settings), got {settings!r}")
        if not isinstance(settings.enabled, bool):
            raise ValueError(f"methods.{m.flag}.enabled: expected true or false, got {settings.enabled!r}")
    on = enabled(config)
    for m in on:
        _check_model_has_what_it_acts_on(m, config.model)
    flags = {m.flag for m in on}
    for m in on:
        for other in m.incompatible_with:
            if other in flags:
                raise ValueError(f"{m.flag} and {other} cannot be on together; turn one of them off")
    for m in on:
        m.validate(config)


def _check_model_has_what_it_acts_on(method, model) -> None:
    if model.architecture not in method.architectures:
        raise ValueError(f"{method.flag}: acts on {method.acts_on}, which architecture {model.architecture!r} does not "
                         f"have (supported: {', '.join(method.architectures)}); set it to false")
    if method.needs_mixer and model.no_mixer:
        raise ValueError(f"{method.flag}: acts on the BK-Core mixer, which model.no_mixer leaves out; turn one of "
                         "them off")


def attach_order(config) -> list:
    """The enabled methods in the order they attach: registry order, except that a method comes
    after every enabled flag of its ``attach_after``."""
    pending, ordered = enabled(config), []
    while pending:
        ready = [m for m in pending if not set(m.attach_after) & {p.flag for p in pending if p is not m}]
        if not ready:
            raise ValueError(f"attach_after: the methods {', '.join(m.flag for m in pending)} wait on each other")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return ordered


def attach_all(model, config) -> None:
    """Every enabled method's ``attach``, in ``attach_order``."""
    for method in attach_order(config):
        method.attach(model, config)


def listeners_for(config) -> list:
    """The listeners a run of ``config`` gives the loop: each enabled method, in registry order,
    then the exporter, which writes the model the methods' EXPORT contributions describe."""
    return [m(config) for m in enabled(config)] + [Exporter()]


__all__ = ["BY_FLAG", "FLAGS", "default_settings", "ORIGINAL_FLAGS", "REGISTRY", "Event", "Method", "attach_all", "attach_order", "enabled",
           "listeners_for", "validate"]
