"""The training loop of one model, top to bottom: set-up and resume, the epochs and their steps,
the end of each epoch, the final evaluation and the results.

Protocol (the original benchmark's, made honest): AdamW, cosine schedule from ``lr`` to
``lr * min_lr_ratio`` with optional linear warmup, gradient clipping, window order shuffled by a
seeded generator each epoch. Validation perplexity after every epoch (eval mode, token-weighted
over the whole split); test perplexity once, from the best-validation weights. A step whose loss
or gradient is not finite is skipped and counted; too many in a row stop the run, which keeps
what it measured. The reproduction of PyTorch's word_language_model example swaps in plain SGD,
the plateau schedule, text order and an LSTM state carried across windows.

Everything else happens at the loop's events (``train.events``): the optimization methods and
the measurements (``train.listeners``) are listeners; the loop itself knows neither.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch

from .. import data as wt2
from ..measure.causality import probe_causality
from ..measure.context_reach import context_reach
from ..measure.decay_law import decay_law
from ..measure.memory import PeakMemory
from ..models import LanguageModel
from . import distributed
from .checkpoint import load_run, save_run
from .events import Event, Listener, Listeners
from .listeners import measurements
from .optim import make_optimizer, make_scheduler, steps_per_step
from .results import BenchmarkResults, build_results
from .state import EpochRecord, Progress, TrainState
from .step import train_step


def train(config: Any, corpus: wt2.Corpus, run_dir: str | Path, *, build_model: Callable[[], LanguageModel],
          methods: list[Listener] = (), resume: bool = False, quiet: bool = False, log=print,
          steps_csv: Optional[str | Path] = None, tensorboard_dir: Optional[str | Path] = None) -> BenchmarkResults:
    """Train the model ``build_model()`` makes (called once the seeds are set) on ``corpus`` with
    ``config``'s settings and the ``methods``' listeners, and return what was measured.
    ``run_dir`` receives the checkpoint; ``steps_csv`` the per-step log, ``tensorboard_dir`` the
    same as TensorBoard events."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = set_up(config, corpus, run_dir, build_model, list(methods), resume=resume, quiet=quiet, log=log,
                   steps_csv=steps_csv, tensorboard_dir=tensorboard_dir)
    try:
        while not finished(state):
            run_epoch(state)
            end_epoch(state)
    finally:
        state.listeners.close()
    return finish(state)


def set_up(config, corpus, run_dir: Path, build_model, methods: list, *, resume: bool, quiet: bool, log, steps_csv,
           tensorboard_dir) -> TrainState:
    """Device, threads, seeds, the model (MODEL_BUILT), optimizer, data, schedule; resume."""
    device = distributed.resolve_device(config.device)
    world = distributed.world(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.model.architecture == "resnet_bk" and config.model.bk_mode != "causal" and not config.allow_noncausal:
        raise ValueError(
            f"{config.model_name}: bk_mode={config.model.bk_mode!r} reads future tokens, so its perplexity is not a "
            "language-model perplexity; pass --allow-noncausal (allow_noncausal: true) to train it anyway")
    if not world.is_main:
        log = lambda *_: None
    for flag, reason in config.left_out_methods.items():
        log(f"[{config.model_name}] {flag} {reason}")
    memory = PeakMemory(device)
    memory.start()  # the baseline: after the data, before the model
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model().to(device)
    # An expert no token was routed to in a step, or a halted token's skipped block, has no
    # gradient: DDP must be told to expect that.
    forward = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=config.model.architecture == "resnet_bk")
               if world.distributed else model)
    listeners = Listeners([*methods, *measurements(config, steps_csv=steps_csv, is_main=world.is_main,
                                                   tensorboard_dir=tensorboard_dir)])
    state = TrainState(config=config, corpus=corpus, device=device, world=world, listeners=listeners, model=model,
                       forward=forward, memory=memory, run_dir=run_dir, quiet=quiet, log=log)
    listeners.fire(Event.MODEL_BUILT, state)
    state.optimizer = make_optimizer(model, config)
    train_tokens = wt2.limit_tokens(corpus.train, config.max_train_tokens, config.data_fraction)
    state.train_inputs, state.train_targets = distributed.shard_rows(*wt2.streams(train_tokens, config.batch_size), world)
    state.steps_per_epoch = wt2.num_windows(state.train_inputs, config.model.n_seq)
    # Methods that train on part of each epoch (active learning) shorten the schedule.
    state.total_steps = listeners.epoch_windows(state.steps_per_epoch) * config.epochs
    if config.max_steps is not None:
        state.total_steps = min(state.total_steps, config.max_steps)
    state.scheduler = make_scheduler(state.optimizer, config, state.total_steps)
    model.set_state_carry(config.carry_state)  # for the run (evaluation and the probes set their own)
    state.scaler = listeners.grad_scaler(device)
    if resume and load_run(state, Progress):
        log(f"[{config.model_name}] resumed from {run_dir} after epoch {state.progress.epoch} "
            f"(step {state.progress.step})")
    return state


def finished(state: TrainState) -> bool:
    p = state.progress
    return p.epoch >= state.config.epochs or p.stopped_early is not None or p.step >= state.total_steps


def run_epoch(state: TrainState) -> None:
    """One pass over the epoch's windows (EPOCH_START may reorder or drop them), a step each."""
    config, progress = state.config, state.progress
    shuffled = torch.randperm(state.steps_per_epoch, generator=torch.Generator().manual_seed(config.seed * 1000 +
                                                                                             progress.epoch))
    state.window_order = shuffled if config.shuffle_windows else torch.arange(state.steps_per_epoch)
    state.model.reset_state()  # a carried state starts each epoch fresh
    state.epoch = EpochRecord()
    state.listeners.fire(Event.EPOCH_START, state)
    for x, y in wt2.windows(state.train_inputs, state.train_targets, config.model.n_seq, state.window_order):
        if progress.step >= state.total_steps:
            break
        state.inputs, state.targets = x.to(state.device), y.to(state.device)
        state.listeners.fire(Event.BATCH_START, state)
        run_step(state)
        state.listeners.fire(Event.STEP_END, state)
        if progress.stopped_early is not None:
            break


def run_step(state: TrainState) -> None:
    """``train_step`` with the methods' LOSS and AFTER_BACKWARD in the middle, then the schedule,
    AFTER_OPTIMIZER_STEP and the bookkeeping of a taken or skipped step."""
    config, progress, epoch, fire = state.config, state.progress, state.epoch, state.listeners.fire

    def on_loss(hidden, aux_losses, terms):
        state.hidden, state.aux_losses, state.loss_terms = hidden, aux_losses, terms
        fire(Event.LOSS, state)

    outcome = train_step(state.model, state.optimizer, state.inputs, state.targets, forward=state.forward,
                         world=state.world, scaler=state.scaler, grad_clip=config.grad_clip,
                         load_balance_weight=config.load_balance_weight, fused_head=config.fused_head,
                         context=state.forward_context, tracer=state.tracer, on_loss=on_loss,
                         on_backward=lambda: fire(Event.AFTER_BACKWARD, state))
    progress.step += 1
    state.step_record = {"loss": outcome.nll_sum / max(outcome.tokens, 1), "total_loss": outcome.total_loss,
                         "grad_norm": outcome.grad_norm, "skipped": not outcome.taken, "terms": outcome.terms}
    if outcome.taken:
        if steps_per_step(state.scheduler):
            state.scheduler.step()
        fire(Event.AFTER_OPTIMIZER_STEP, state)
        epoch.consecutive_skips = 0
        epoch.add(outcome.nll_sum, outcome.tokens, outcome.terms, outcome.total_loss)
        return
    progress.skipped += 1
    epoch.consecutive_skips += 1
    if epoch.consecutive_skips >= config.max_consecutive_skips:
        progress.stopped_early = (f"{epoch.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                                  f"(at step {progress.step}); stopped, keeping what was measured")
        state.log(f"[{config.model_name}] {progress.stopped_early}")


def end_epoch(state: TrainState) -> None:
    """Validation, the epoch's figures, EPOCH_END, the best weights, the checkpoint, one log line."""
    config, progress, epoch = state.config, state.progress, state.epoch
    valid_nll, _ = state.evaluate(state.corpus.valid, label="validation")
    state.epoch_valid_perplexity = valid_ppl = math.exp(valid_nll)
    if not steps_per_step(state.scheduler):
        state.scheduler.step(valid_nll)
    train_loss = epoch.nll / epoch.tokens if epoch.tokens else math.nan
    progress.epoch_losses.append(train_loss)
    progress.epoch_perplexities.append(valid_ppl)
    progress.epoch_times.append(epoch.time)
    for name, total in epoch.terms.items():
        progress.epoch_aux_losses.setdefault(name, []).append(total / max(epoch.steps, 1))
    state.listeners.fire(Event.EPOCH_END, state)
    eligible = progress.step >= state.listeners.best_from_step(state.total_steps)
    if eligible and valid_ppl < progress.best_valid:
        progress.best_valid, progress.best_epoch = valid_ppl, progress.epoch + 1
        progress.best_model = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    progress.epoch += 1
    if state.world.is_main:
        save_run(state)
        state.log(f"[{config.model_name}] epoch {progress.epoch}: train loss {train_loss:.4f}, valid ppl "
                  f"{valid_ppl:.2f}, {epoch.time:.1f} s, {epoch.tokens_per_second():,.0f} tokens/s")


def finish(state: TrainState) -> BenchmarkResults:
    """With the best weights: the causality probe, the test perplexity, the context reach and the
    BK-Core's decay law, the methods' EVALUATION and EXPORT, then the results."""
    config, model, device = state.config, state.model, state.device
    if state.progress.best_model is not None:
        model.load_state_dict(state.progress.best_model)
    with model.state_carry(False):  # the probes compare single windows, each from a fresh state
        probe = probe_causality(model, state.corpus.vocab_size, config.model.n_seq, device=device)
    if not probe.causal:
        state.log(f"[{config.model_name}] the causality probe FAILED: {probe.summary()}. Its perplexities are not "
                  "language-model perplexities and are reported under noncausal_perplexities only.")
    test_nll = state.evaluate(state.corpus.test, label="test")[0] if config.evaluate_test else math.nan
    with model.state_carry(False):
        reach = context_reach(model, state.corpus.valid, config.model.n_seq, device=device, context=state.forward_context)
        decay = decay_law(model, state.corpus.valid, config.model.n_seq, device=device, context=state.forward_context)
    state.listeners.fire(Event.EVALUATION, state)
    state.listeners.fire(Event.EXPORT, state)
    return build_results(state, probe, test_nll, reach, decay)
