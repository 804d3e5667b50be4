"""The state a run keeps: ``Progress`` (checkpointed), ``EpochRecord`` (the epoch so far) and
``TrainState``, everything the loop and its listeners (the methods, the measurements) share."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..data import Corpus
from ..flops import FlopsTracer
from ..measure.memory import PeakMemory
from ..models import LanguageModel
from .distributed import World
from .evaluate import eval_windows, evaluate
from .events import Listeners
from .progress import progress_bar, with_progress


@dataclass
class Progress:
    """What the run has done so far: checkpointed after every epoch, restored by ``--resume``."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0
    train_time: float = 0.0  # wall time of every training step (evaluation excluded)
    train_tokens: int = 0
    untraced_time: float = 0.0  # the steps the FLOPs tracer did not price: the throughput
    untraced_tokens: int = 0
    traced_steps: int = 0
    epoch_losses: list = field(default_factory=list)
    epoch_perplexities: list = field(default_factory=list)
    epoch_times: list = field(default_factory=list)
    epoch_aux_losses: dict = field(default_factory=dict)  # name -> per-epoch mean (weighted, as in the loss)
    best_valid: float = math.inf
    best_epoch: int = 0
    best_model: Optional[dict] = None
    stopped_early: Optional[str] = None
    flops: Optional[dict] = None
    figures: dict = field(default_factory=dict)  # method flag -> its own measurements
    valid_curve: list = field(default_factory=list)  # every valid_curve_interval steps (listeners.ValidCurve)


@dataclass
class EpochRecord:
    """The epoch so far: sums of the training NLL and of each named loss term over the successful
    steps; wall time and tokens of all steps and of the untraced ones (the throughput)."""

    nll: float = 0.0
    tokens: int = 0
    steps: int = 0
    terms: dict = field(default_factory=dict)
    last: float = math.nan  # the last step's total loss
    consecutive_skips: int = 0
    time: float = 0.0
    all_tokens: int = 0
    untraced_time: float = 0.0
    untraced_tokens: int = 0
    traced_steps: int = 0
    tracer: FlopsTracer = field(default_factory=FlopsTracer)  # priced at the end of the epoch

    def add(self, nll: float, tokens: int, terms: dict, loss: float) -> None:
        self.nll, self.tokens, self.steps, self.last = self.nll + nll, self.tokens + tokens, self.steps + 1, loss
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value

    def tokens_per_second(self) -> float:
        return throughput(self.untraced_tokens, self.untraced_time, self.all_tokens, self.time)


def throughput(untraced_tokens: int, untraced_time: float, all_tokens: int, all_time: float) -> float:
    """Tokens/s of the steps the FLOPs tracer did not price (of all steps while none ran untraced)."""
    if untraced_time > 0:
        return untraced_tokens / untraced_time
    return all_tokens / all_time if all_time > 0 else 0.0


@dataclass
class TrainState:
    """Everything the loop and its listeners share; the fields under "the current step" are set
    for the step being run (BATCH_START to STEP_END)."""

    config: Any  # the run's settings (resnetbk.bench.config.BenchmarkConfig, read by field)
    corpus: Corpus
    device: torch.device
    world: World
    listeners: Listeners
    model: LanguageModel
    forward: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    memory: PeakMemory
    run_dir: Path  # where the checkpoint (and an exported model) go
    quiet: bool = True  # no progress output
    log: Callable[[str], None] = print
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Any = None  # a LambdaLR (stepped per step) or ReduceLROnPlateau (per epoch)
    scaler: Optional[torch.amp.GradScaler] = None
    progress: Progress = field(default_factory=Progress)
    epoch: EpochRecord = field(default_factory=EpochRecord)
    train_inputs: Optional[torch.Tensor] = None  # the training data: (rows, tokens) streams
    train_targets: Optional[torch.Tensor] = None
    steps_per_epoch: int = 0
    total_steps: int = 0
    window_order: Optional[torch.Tensor] = None  # this epoch's order of windows (EPOCH_START may change it)
    epoch_valid_perplexity: float = math.nan
    # The current step.
    inputs: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    tracer: Optional[FlopsTracer] = None  # set at BATCH_START on the steps the FLOPs tracer prices
    hidden: Optional[torch.Tensor] = None  # the final hidden states the LM head read
    aux_losses: dict = field(default_factory=dict)  # the model's named auxiliary losses (unweighted)
    loss_terms: dict = field(default_factory=dict)  # named terms added to the loss (weighted)
    step_record: dict = field(default_factory=dict)  # the last step's loss, gradient norm, terms, seconds, tokens
    # The end of the run.
    exports: dict = field(default_factory=dict)  # the methods' EXPORT contributions (methods.export)
    exported: Optional[dict] = None  # the exported model's file and size, when one was written

    @property
    def figures(self) -> dict:
        return self.progress.figures

    def forward_context(self) -> AbstractContextManager:
        return self.listeners.forward_context(self.device)

    def evaluate(self, tokens: torch.Tensor, *, max_tokens: Optional[int] = None, tracer: Optional[FlopsTracer] = None,
                 on_batch: Optional[Callable[[int], None]] = None, label: Optional[str] = None) -> tuple[float, int]:
        """``evaluate`` of this run's model with the listeners' forward context; with ``label``, a
        progress bar (or plain lines in a log) over the windows, since a full split takes minutes
        on a CPU."""
        bar = None if label is None else progress_bar(eval_windows(tokens, self.config), f"{self.config.model_name} "
                                                      f"{label}", self.quiet, unit="window")
        try:
            return evaluate(self.model, tokens, self.config, self.device, context=self.forward_context,
                            max_tokens=max_tokens, tracer=tracer, on_batch=with_progress(on_batch, bar))
        finally:
            if bar is not None:
                bar.close()
