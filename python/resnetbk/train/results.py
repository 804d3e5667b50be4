"""``BenchmarkResults``: what a run measured, as a stable JSON document.

Schema (``schema_version`` 7): every field below, JSON-typed; durations in seconds, memory in
MiB, perplexities as ``exp(mean NLL)`` per token. ``test_perplexity`` is the test perplexity of
the best-validation weights; ``best_valid_perplexity`` the best validation perplexity;
``epoch_perplexities`` the validation perplexity after each epoch; ``epoch_losses`` the mean
training loss of each epoch. FLOPs are measured from execution (``resnetbk.flops``): traced
training steps are priced by the Rust engine; ``forward_flops``/``backward_flops``/
``optimizer_flops``/``total_flops_per_step`` are averages per traced step,
``total_training_flops`` that average times the executed steps, and ``flops_breakdown`` has the per-step FLOPs by
component and phase, the totals by category and any unknown (unpriced) ops. They are ``null``
only when no step ran. ``epoch_aux_losses`` has each named auxiliary loss term (weighted, as
added to the loss: ``load_balance``, ``ponder``, ``sparsity``, ``exit``, ...) averaged per epoch;
``methods`` each enabled optimization method's own measurements, by flag (schema version 2
added these two). ``causal`` is false for a model that failed the causality probe:
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

Schema version 5 added ``context_reach`` (``resnetbk.measure.context_reach``): the sensitivity of the
loss at a validation window's last position to the embedded input ``d`` positions back, for
every ``d`` (``gradient_norm``, and ``relative`` to ``d = 0``); null in files of older versions.

Schema version 6: ``config`` is nested as the config is (``model``: the model's fields;
``methods``: flag -> ``enabled`` and its hyper-parameters; ``resnetbk.bench.config.flat_view``
reads either layout); the original benchmark's duplicate names ``final_perplexity``,
``best_perplexity``, ``final_loss`` and ``perplexity_is_lm`` are gone (``test_perplexity``,
``best_valid_perplexity``, ``train_loss``, ``causal``): reading an older file drops them.

Schema version 7 added ``decay_law`` (``resnetbk.measure.decay_law``): for a ResNet-BK, each
block's BK-Core channels' contraction per position from their learnt potentials and z, and the
sensitivity it predicts at each distance (to set beside ``context_reach``); null for the other
models and in files of older versions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..flops import component_summary
from ..jsonfile import json_safe, write_json_atomic
from ..measure.environment import environment
from ..validate import reject_unknown_fields
from .state import TrainState, throughput

SCHEMA_VERSION = 7
#: Older schemas' second names for other fields (the original benchmark's), dropped on reading.
LEGACY_DUPLICATES = ("final_perplexity", "best_perplexity", "final_loss", "perplexity_is_lm")


@dataclass
class BenchmarkResults:
    # The original benchmark's fields (its final_loss, final_perplexity and best_perplexity are
    # train_loss, test_perplexity and best_valid_perplexity below).
    model_name: str
    config: dict
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
    causal: bool = True  # passed the causality probe: its perplexities are language-model perplexities
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
    decay_law: Optional[dict] = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        return json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResults:
        """From a results document of this or an older schema (their duplicate names dropped)."""
        data = {k: v for k, v in data.items() if k not in LEGACY_DUPLICATES}
        reject_unknown_fields(cls, data, "results")
        return cls(**{k: (math.nan if v is None and k.endswith("perplexity") else v) for k, v in data.items()})

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkResults:
        return cls.from_dict(json.loads(Path(path).read_text()))


def build_results(state: TrainState, probe, test_nll: float, reach: Optional[dict],
                  decay: Optional[dict] = None) -> BenchmarkResults:
    """The results of a finished run, in one place: from its progress, the causality ``probe``,
    the test NLL, the context ``reach``, the exported model and the memory figures. A model that
    fails the probe gets no language-model perplexity: its measured perplexities are kept under
    ``noncausal_perplexities`` only."""
    config, progress, model = state.config, state.progress, state.model
    size_mb, size_method = model.size_mb(), "parameter and buffer bytes in memory"
    if state.exported is not None:
        size_mb = state.exported["bytes"] / 2**20
        size_method = (f"size on disk of the exported model ({Path(state.exported['path']).name}: "
                       f"{state.exported['format']})")
    memory = state.memory.figures()
    counts = model.parameter_counts()
    versions, git = environment()
    flops = _flops_fields(progress.flops, progress.traced_steps, progress.step, state.world)
    last_loss = progress.epoch_losses[-1] if progress.epoch_losses else math.nan
    perplexities = dict(epoch_perplexities=list(progress.epoch_perplexities),
                        valid_perplexity=progress.epoch_perplexities[-1] if progress.epoch_perplexities else math.nan,
                        test_perplexity=math.exp(test_nll), best_valid_perplexity=progress.best_valid)
    noncausal = None
    if not probe.causal:
        noncausal = perplexities
        perplexities = {k: ([] if isinstance(v, list) else math.nan) for k, v in perplexities.items()}
    tokens_per_second = throughput(progress.untraced_tokens, progress.untraced_time, progress.train_tokens,
                                   progress.train_time)
    if progress.untraced_time > 0:
        throughput_method = (f"training tokens / wall time of the {progress.step - progress.traced_steps} steps the FLOPs "
                             "tracer did not price (the tracer's cost excluded; evaluation excluded)")
    else:
        throughput_method = "training tokens / wall time of all steps, every one priced by the FLOPs tracer (its cost included)"
    return BenchmarkResults(
        model_name=config.model_name, config=config.to_dict(), training_time=progress.train_time,
        peak_memory_mb=memory["peak_mb"], peak_memory_above_baseline_mb=memory["above_baseline_mb"],
        model_size_mb=size_mb, model_size_method=size_method, epoch_losses=progress.epoch_losses,
        epoch_times=progress.epoch_times, best_epoch=progress.best_epoch, train_loss=last_loss,
        train_perplexity=math.exp(last_loss) if math.isfinite(last_loss) else math.nan,
        tokens_per_second=tokens_per_second, throughput_method=throughput_method,
        steps=progress.step, skipped_steps=progress.skipped, stopped_early=progress.stopped_early,
        vocab_size=state.corpus.vocab_size, parameters=counts["total"], non_embedding_parameters=counts["non_embedding"],
        causal=probe.causal, causality_probe=probe.summary(),
        noncausal_perplexities=noncausal, peak_memory_method=memory["method"], dataset=state.corpus.describe(),
        device=str(state.device), versions=versions, git_revision=git, epoch_aux_losses=progress.epoch_aux_losses,
        methods={**{flag: {"left_out": why} for flag, why in config.left_out_methods.items()}, **progress.figures},
        valid_curve=progress.valid_curve, context_reach=reach, decay_law=decay, **perplexities, **flops,
    )


def _flops_fields(report: Optional[dict], traced_steps: int, steps: int, world) -> dict:
    """The results' FLOPs fields from the merged trace of the traced training steps.

    Every ``flops_trace_interval``-th step is traced (all of them at interval 1); per-step figures
    are averages over the traced steps, the total is that average times the executed steps (the
    last window of an epoch can be shorter; at interval 1 the total is exact).
    """
    if report is None or traced_steps == 0:
        return {}
    forward, backward, optimizer = world.sum([report["by_phase"].get(p, 0) for p in ("forward", "backward", "optimizer")])
    per_step = [round(v / traced_steps) for v in (forward, backward, optimizer)]
    return dict(
        forward_flops=per_step[0], backward_flops=per_step[1], optimizer_flops=per_step[2],
        total_flops_per_step=sum(per_step), total_training_flops=int(sum(per_step) * steps),
        flops_breakdown={
            "per_step_by_component": component_summary(report["by_component"], traced_steps),
            "by_category": report["by_category"],
            "unknown_ops": report["unknown"],
            "traced_steps": traced_steps,
            "executed_steps": steps,
            "scope": "training steps as executed (forward, backward, optimizer.step; gradient clipping and "
                     "evaluation not counted), traced on every flops_trace_interval-th step; per-step figures "
                     "average the traced steps, the total multiplies that by the executed steps; components "
                     "and categories are this process's share, summed over the traced steps",
        },
    )
