"""``BenchmarkResults``: what a run measured, as a stable JSON document.

Schema (``schema_version`` 5): every field below, JSON-typed; durations in seconds, memory in
MiB, perplexities as ``exp(mean NLL)`` per token. ``final_perplexity`` is the test perplexity of
the best-validation weights; ``best_perplexity`` the best validation perplexity;
``epoch_perplexities`` the validation perplexity after each epoch; ``epoch_losses`` the mean
training loss of each epoch. FLOPs are measured from execution (``resnetbk.flops``): traced
training steps are priced by the Rust engine; ``forward_flops``/``backward_flops``/
``optimizer_flops``/``total_flops_per_step`` are averages per traced step,
``total_training_flops`` that average times the executed steps, and ``flops_breakdown`` has the per-step FLOPs by
component and phase, the totals by category and any unknown (unpriced) ops. They are ``null``
only when no step ran. ``epoch_aux_losses`` has each named auxiliary loss term (weighted, as
added to the loss: ``load_balance``, ``ponder``, ``sparsity``, ``exit``, ...) averaged per epoch;
``methods`` each enabled optimization method's own measurements, by flag (schema version 2
added these two). ``perplexity_is_lm`` is false for a model that failed the causality probe:
its perplexity is not a language-model perplexity, so every perplexity field is null and the
measured values sit in ``noncausal_perplexities``.

Schema version 3 added: ``peak_memory_above_baseline_mb`` (the training's peak above the
resident memory after data loading; ``peak_memory_mb`` stays the whole process's high-water mark,
``peak_memory_method`` says how each was measured), ``throughput_method`` (``tokens_per_second``
times only the steps the FLOPs tracer did not price), ``noncausal_perplexities``; FLOPs are traced
on every ``flops_trace_interval``-th step (``flops_breakdown.traced_steps``).

Schema version 4 added ``valid_curve``: with ``valid_curve_interval`` set, every k-th step's
perplexity on the first ``method_eval_tokens`` validation tokens, with the step, the training
tokens and the training time so far (``[{step, tokens, train_time, perplexity}]``); and
``model_size_method``: with quantization or pruning on, ``model_size_mb`` is the size on disk of
the exported model (``runs/<model>/exported_model.pt``), otherwise the parameter and buffer bytes.

Schema version 5 added ``context_reach`` (``resnetbk.context_reach``): the sensitivity of the
loss at a validation window's last position to the embedded input ``d`` positions back, for
every ``d`` (``gradient_norm``, and ``relative`` to ``d = 0``); null in files of older versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import reject_unknown_fields

SCHEMA_VERSION = 5


@dataclass
class BenchmarkResults:
    # The original benchmark's fields.
    model_name: str
    config: dict
    final_loss: float
    final_perplexity: float
    best_perplexity: float
    training_time: float
    forward_flops: Optional[int] = None
    backward_flops: Optional[int] = None
    optimizer_flops: Optional[int] = None
    total_flops_per_step: Optional[int] = None
    total_training_flops: Optional[int] = None
    peak_memory_mb: Optional[float] = None
    model_size_mb: float = 0.0
    model_size_method: str = "parameter and buffer bytes in memory"
    epoch_losses: list = field(default_factory=list)
    epoch_perplexities: list = field(default_factory=list)
    epoch_times: list = field(default_factory=list)
    # What an honest report also needs.
    valid_perplexity: float = math.nan
    test_perplexity: float = math.nan
    best_valid_perplexity: float = math.nan
    best_epoch: int = 0
    train_loss: float = math.nan
    train_perplexity: float = math.nan
    tokens_per_second: float = 0.0
    steps: int = 0
    skipped_steps: int = 0
    stopped_early: Optional[str] = None
    vocab_size: int = 0
    parameters: int = 0
    non_embedding_parameters: int = 0
    causal: bool = True
    perplexity_is_lm: bool = True
    causality_probe: str = ""
    peak_memory_method: str = ""
    peak_memory_above_baseline_mb: Optional[float] = None
    throughput_method: str = ""
    noncausal_perplexities: Optional[dict] = None
    dataset: str = ""
    device: str = ""
    versions: dict = field(default_factory=dict)
    git_revision: Optional[str] = None
    flops_breakdown: Optional[dict] = None
    epoch_aux_losses: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)
    valid_curve: list = field(default_factory=list)
    context_reach: Optional[dict] = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResults:
        reject_unknown_fields(cls, data, "results")
        return cls(**{k: (math.nan if v is None and k.endswith("perplexity") else v) for k, v in data.items()})

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkResults:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _json_safe(value):
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, data) -> None:
    """Write to a temporary file in the same folder, then rename: never a half-written file.
    The file gets the mode a plain ``open`` would give (0666 less the umask), not the
    temporary file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(data), f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def compare_results(a: BenchmarkResults, b: BenchmarkResults) -> dict:
    """How ``b`` compares with ``a`` (the reference): speed-ups, perplexity and resource changes.

    ``speedup_time = a.training_time / b.training_time`` (>1: b is faster);
    ``speedup_flops`` likewise from total training FLOPs (null until measured);
    ``perplexity_difference_percent = 100 (b - a) / a`` on test perplexity (<0: b is better);
    ``memory_reduction_percent`` and ``size_reduction_percent = 100 (a - b) / a``.
    """

    def ratio(x, y):
        return x / y if x is not None and y not in (None, 0) else None

    def percent(x, y):
        return 100.0 * x / y if x is not None and y not in (None, 0) else None

    mem_a, mem_b = a.peak_memory_mb, b.peak_memory_mb
    return _json_safe({
        "reference": a.model_name,
        "model": b.model_name,
        "speedup_time": ratio(a.training_time, b.training_time),
        "speedup_flops": ratio(a.total_training_flops, b.total_training_flops),
        "perplexity_reference": a.test_perplexity,
        "perplexity_model": b.test_perplexity,
        "perplexity_difference_percent": percent(b.test_perplexity - a.test_perplexity, a.test_perplexity),
        "memory_reduction_percent": percent(None if mem_a is None or mem_b is None else mem_a - mem_b, mem_a),
        "size_reduction_percent": percent(a.model_size_mb - b.model_size_mb, a.model_size_mb),
        "both_language_models": a.perplexity_is_lm and b.perplexity_is_lm,
    })
