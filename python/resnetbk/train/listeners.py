"""What the loop measures, attached to its events like any method: the step's wall time and the
throughput, FLOPs tracing, the validation curve, the per-step CSV and the progress bar.

They run before the methods at the same event where it matters (``order`` below 0), so that a
method's work at EPOCH_START (active learning's scoring pass) counts as training time while an
evaluation in the middle of training (the validation curve) does not.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

from ..flops import merge_reports
from ..measure.step_log import StepLog
from .events import Listener
from .progress import progress_bar


class StepTimer(Listener):
    """Wall time and tokens of every step, of the untraced steps apart (the throughput: the FLOPs
    tracer's own cost stays out of it), and of each epoch's EPOCH_START work (the methods' own:
    active learning's scoring pass is training time). The step's clock starts after the methods'
    BATCH_START (``StepClock``, ordered after them), as the training step itself."""

    order = -100

    def __init__(self):
        self.epoch_start: Optional[float] = None
        self.step_start = 0.0
        self.clock = StepClock(self)

    def on_epoch_start(self, state) -> None:
        self.epoch_start = time.perf_counter()  # before the methods' EPOCH_START

    def on_batch_start(self, state) -> None:
        if self.epoch_start is not None:  # the epoch's EPOCH_START work ends before the first step's BATCH_START
            state.epoch.time += time.perf_counter() - self.epoch_start
            self.epoch_start = None

    def on_step_end(self, state) -> None:
        elapsed = time.perf_counter() - self.step_start
        tokens = state.inputs.numel() * state.world.size
        epoch = state.epoch
        epoch.time += elapsed
        epoch.all_tokens += tokens
        if state.tracer is not None:
            epoch.traced_steps += 1
        else:
            epoch.untraced_time += elapsed
            epoch.untraced_tokens += tokens
        state.step_record.update(seconds=elapsed, tokens=tokens)

    def on_epoch_end(self, state) -> None:
        progress, epoch = state.progress, state.epoch
        progress.train_time += epoch.time
        progress.train_tokens += epoch.all_tokens
        progress.untraced_time += epoch.untraced_time
        progress.untraced_tokens += epoch.untraced_tokens


class FlopsTracing(Listener):
    """Prices every ``flops_trace_interval``-th training step with the FLOPs tracer (the epoch's
    tracer, priced by the Rust engine once at the end of the epoch)."""

    order = -90

    def __init__(self, interval: int):
        self.interval = interval

    def on_batch_start(self, state) -> None:
        state.tracer = state.epoch.tracer if state.progress.step % self.interval == 0 else None

    def on_epoch_end(self, state) -> None:
        epoch, progress = state.epoch, state.progress
        if epoch.traced_steps:
            progress.flops = merge_reports(progress.flops, epoch.tracer.report())
            progress.traced_steps += epoch.traced_steps


class StepCsv(Listener):
    """``<model>_steps.csv`` (``measure.step_log``): one row per step, and TensorBoard events."""

    order = -80

    def __init__(self, path: Path, tensorboard_dir: Optional[Path] = None):
        self.path, self.tensorboard_dir = path, tensorboard_dir
        self.log: Optional[StepLog] = None
        self._lr = math.nan

    def on_epoch_start(self, state) -> None:
        if self.log is None:  # opened once the run knows its step: a resumed run keeps the rows up to it
            self.log = StepLog(self.path, keep_steps=state.progress.step, tensorboard_dir=self.tensorboard_dir)

    def on_batch_start(self, state) -> None:
        self._lr = state.optimizer.param_groups[0]["lr"]  # the rate this step uses

    def on_step_end(self, state) -> None:
        r = state.step_record
        self.log.write(dict(step=state.progress.step, epoch=state.progress.epoch + 1, lr=self._lr, loss=r["loss"],
                            total_loss=r["total_loss"], grad_norm=r["grad_norm"],
                            tokens_per_second=r["tokens"] / max(r["seconds"], 1e-9),
                            flops_traced=int(state.tracer is not None), skipped=int(r["skipped"]), terms=r["terms"]))

    def on_epoch_end(self, state) -> None:
        self.log.flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


class ValidCurve(Listener):
    """Every ``interval`` steps, the perplexity on the first ``method_eval_tokens`` validation
    tokens, with the training tokens and time so far (not timed as training)."""

    order = -70

    def __init__(self, interval: int):
        self.interval = interval

    def on_step_end(self, state) -> None:
        progress = state.progress
        if progress.step % self.interval or progress.stopped_early is not None:
            return
        nll, _ = state.evaluate(state.corpus.valid, max_tokens=state.config.method_eval_tokens)
        progress.valid_curve.append({"step": progress.step, "tokens": progress.train_tokens + state.epoch.all_tokens,
                                     "train_time": progress.train_time + state.epoch.time,
                                     "perplexity": math.exp(nll)})


class ProgressBar(Listener):
    """A bar per epoch (plain lines in a log): steps, the last loss, tokens/s, the ETA."""

    order = 100

    def __init__(self):
        self.bar = None

    def on_epoch_start(self, state) -> None:
        config = state.config
        self.bar = progress_bar(len(state.window_order), f"{config.model_name} epoch {state.progress.epoch + 1}/"
                                f"{config.epochs}", state.quiet)

    def on_step_end(self, state) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{state.epoch.last:.3f}", tok_s=f"{state.epoch.tokens_per_second():,.0f}")
            self.bar.update(1)

    def on_epoch_end(self, state) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StepClock(Listener):
    """``StepTimer``'s start of a step, after the methods' BATCH_START (curriculum's cut)."""

    order = 200

    def __init__(self, timer: StepTimer):
        self.timer = timer

    def on_batch_start(self, state) -> None:
        self.timer.step_start = time.perf_counter()


def measurements(config, *, steps_csv: Optional[Path], tensorboard_dir: Optional[Path], is_main: bool) -> list:
    """The loop's measuring listeners for ``config``: the step timer and FLOPs tracing always, the
    validation curve with ``valid_curve_interval``, the CSV on the main process, the progress bar."""
    timer = StepTimer()
    listeners = [timer, timer.clock, FlopsTracing(config.flops_trace_interval), ProgressBar()]
    if config.valid_curve_interval:
        listeners.append(ValidCurve(config.valid_curve_interval))
    if steps_csv is not None and is_main:
        listeners.append(StepCsv(Path(steps_csv), Path(tensorboard_dir) if tensorboard_dir else None))
    return listeners
