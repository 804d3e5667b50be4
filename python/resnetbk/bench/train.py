"""Training and evaluation of one model: a plain loop, checkpointed after every epoch.

Protocol (the original benchmark's, made honest): AdamW, cosine schedule from ``lr`` to ``lr * min_lr_ratio``
with optional linear warmup, gradient clipping, window order shuffled by a seeded generator each
epoch. Validation perplexity after every epoch (eval mode, token-weighted over the whole split);
test perplexity once, from the best-validation weights. A step whose loss or gradient is not
finite is skipped and counted; too many in a row stop the run, which keeps what it measured.
The reproduction of PyTorch's word_language_model example (``bench.reproduce``) swaps in plain
SGD, the plateau schedule, text order and an LSTM state carried across windows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from .. import data as wt2
from ..causality import probe_causality
from ..context_reach import context_reach
from ..flops import FlopsTracer, component_summary, merge_reports
from ..methods import ActiveMethods, Event
from ..methods import enabled as enabled_methods
from ..models import build_model
from . import distributed
from .config import model_options
from .memory import PeakMemory
from .results import BenchmarkResults
from .step_log import StepLog

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def make_model(config, vocab_size: int):
    """The model ``config`` trains: built from its options, then each enabled method's ``attach``."""
    model = build_model(model_options(config, vocab_size))
    for method in enabled_methods(config):
        method.attach(model, config)
    return model


def parameter_groups(model: torch.nn.Module, decay_norms_biases_embeddings: bool, weight_decay: float) -> list:
    """AdamW's groups: weight decay on weight matrices only, unless ``decay_norms_biases_embeddings``;
    never on a parameter marked ``_no_weight_decay`` (Mamba's A_log, as in its reference).
    (The FLOPs estimate prices the optimizer from these same groups.)"""
    embeddings = {id(m.weight) for m in (model.token_embedding, model.position_embedding) if m is not None}
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        plain = p.dim() >= 2 and id(p) not in embeddings and not getattr(p, "_no_weight_decay", False)
        (decay if plain or decay_norms_biases_embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """``config.optimizer``: AdamW, or plain SGD (no momentum), over ``parameter_groups``."""
    groups = parameter_groups(model, config.decay_norms_biases_embeddings, config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config, total_steps: int):
    """``config.lr_schedule``: "cosine" is stepped after every optimizer step; "plateau" after every
    epoch with the validation loss (lr times ``plateau_factor`` when it did not improve; no
    threshold: an epoch that is not strictly better counts, as in the word_language_model example)."""
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                          patience=0, threshold=0.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, config.warmup_steps, config.min_lr_ratio))


def _per_step(scheduler) -> bool:
    return not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def lr_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then a cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, config, device: torch.device, *, context=nullcontext,
             max_tokens: Optional[int] = None, tracer=None, on_batch=None) -> tuple[float, int]:
    """Mean NLL per token over every (token, next token) pair of ``tokens`` (or its first
    ``max_tokens``), and their count. ``context()`` wraps each forward (the methods' autocast),
    ``tracer`` (a FlopsTracer) records the forwards, ``on_batch(positions)`` runs after each window."""
    model.eval()
    if max_tokens is not None:
        tokens = wt2.limit_tokens(tokens, max(2, max_tokens))
    inputs, targets = wt2.streams(tokens, config.eval_batch_size)
    total, count = 0.0, 0
    traced = tracer if tracer is not None else nullcontext()
    # A carried LSTM state runs through the split in text order, from a fresh state; the
    # training stream's state comes back afterwards.
    with model.state_carry(config.carry_state):
        for x, y in wt2.windows(inputs, targets, config.n_seq):
            x, y = x.contiguous(), y.contiguous()  # torch's quantized embedding needs contiguous ids
            with traced, context():
                nll_sum, _ = model(x.to(device), y.to(device), fused_head=config.fused_head)
                total += nll_sum.item()
            count += int((y != wt2.IGNORE_INDEX).sum())
            if on_batch is not None:
                on_batch(x.numel())
    model.train()
    return total / max(count, 1), count


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file, then an atomic rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _progress(total: int, desc: str, quiet: bool, unit: str = "step"):
    """A tqdm bar on a terminal; plain periodic lines when stderr is a file or a pipe (logs)."""
    if quiet or not distributed.is_main_process():
        return None
    if not sys.stderr.isatty():
        return PlainProgress(total, desc, unit=unit)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, unit=unit)


class PlainProgress:
    """Progress as one plain line every ``interval`` seconds: steps done, the figures, the ETA."""

    def __init__(self, total: int, desc: str, interval: float = 60.0, unit: str = "step"):
        self.total, self.desc, self.interval, self.unit = total, desc, interval, unit
        self.done, self.postfix = 0, {}
        self.start = self.last = time.perf_counter()

    def set_postfix(self, **figures) -> None:
        self.postfix = figures

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            eta = (now - self.start) / self.done * (self.total - self.done)
            figures = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
            figures = f", {figures}" if figures else ""
            print(f"{self.desc}: {self.unit} {self.done}/{self.total}{figures}, ETA {eta / 60:.1f} min",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


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
    valid_curve: list = field(default_factory=list)  # every valid_curve_interval steps (record_valid_curve)


@dataclass
class TrainState:
    """Everything the loop and the methods' event handlers share."""

    config: Any
    corpus: wt2.Corpus
    device: torch.device
    world: Any
    methods: ActiveMethods
    model: Any
    forward: Any  # the model, or its DistributedDataParallel wrapper
    optimizer: Any = None
    scheduler: Any = None
    scaler: Any = None
    progress: Progress = field(default_factory=Progress)
    train_inputs: Any = None  # the training data: (rows, tokens) streams
    train_targets: Any = None
    steps_per_epoch: int = 0
    total_steps: int = 0
    window_order: Optional[torch.Tensor] = None  # this epoch's order of windows (EPOCH_START may change it)
    # The current step (BATCH_START, LOSS):
    inputs: Any = None
    targets: Any = None
    hidden: Any = None  # the final hidden states the LM head read
    aux_losses: dict = field(default_factory=dict)  # the model's named auxiliary losses (unweighted)
    loss_terms: dict = field(default_factory=dict)
    epoch_valid_perplexity: float = math.nan
    step_record: dict = field(default_factory=dict)  # the last step's loss, gradient norm, terms
    memory: Optional[PeakMemory] = None  # started once the data is loaded
    run_dir: Optional[Path] = None  # where the checkpoint (and an exported model) go
    quiet: bool = True  # no progress output (train() sets it from its caller)

    @property
    def figures(self) -> dict:
        return self.progress.figures

    def forward_context(self):
        return self.methods.forward_context(self.device)

    def evaluate(self, tokens, *, max_tokens=None, tracer=None, on_batch=None, label=None) -> tuple[float, int]:
        """``evaluate`` with the methods' forward context; with ``label``, a progress bar (or plain
        lines in a log) over the windows, since a full split takes minutes on a CPU."""
        bar = None
        if label is not None:
            length = -(-max(len(tokens) - 1, 1) // self.config.eval_batch_size)  # as wt2.streams cuts it
            bar = _progress(-(-length // self.config.n_seq), f"{self.config.model_name} {label}", self.quiet,
                            unit="window")
        if bar is not None:
            inner = on_batch

            def on_batch(positions):
                bar.update(1)
                if inner is not None:
                    inner(positions)
        try:
            return evaluate(self.model, tokens, self.config, self.device, context=self.forward_context,
                            max_tokens=max_tokens, tracer=tracer, on_batch=on_batch)
        finally:
            if bar is not None:
                bar.close()


def train(config, corpus: wt2.Corpus, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          log=print, steps_csv: Optional[str | Path] = None, tensorboard_dir: Optional[str | Path] = None
          ) -> BenchmarkResults:
    """Train ``config``'s model on ``corpus`` and return what was measured; ``steps_csv`` receives
    the per-step log (``step_log``), ``tensorboard_dir`` the same as TensorBoard events."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = set_up(config, corpus, run_dir / CHECKPOINT, resume, log)
    state.run_dir, state.quiet = run_dir, quiet
    if not state.world.is_main:
        log = lambda *_: None  # rank 0 speaks for the run
    config, progress, methods = state.config, state.progress, state.methods
    step_log = (StepLog(steps_csv, keep_steps=progress.step, tensorboard_dir=tensorboard_dir)
                if steps_csv is not None and state.world.is_main else None)
    try:
        while progress.epoch < config.epochs and progress.stopped_early is None and progress.step < state.total_steps:
            state.window_order = (torch.randperm(state.steps_per_epoch, generator=torch.Generator().manual_seed(
                config.seed * 1000 + progress.epoch)) if config.shuffle_windows else torch.arange(state.steps_per_epoch))
            state.model.reset_state()  # a carried state starts each epoch fresh
            epoch = EpochLosses()
            # A method's per-epoch work (active learning's scoring pass) is training time.
            start = time.perf_counter()
            methods.fire(Event.EPOCH_START, state)
            epoch.time += time.perf_counter() - start
            bar = _progress(len(state.window_order), f"{config.model_name} epoch {progress.epoch + 1}/{config.epochs}",
                            quiet)
            for x, y in wt2.windows(state.train_inputs, state.train_targets, config.n_seq, state.window_order):
                if progress.step >= state.total_steps:
                    break
                state.inputs, state.targets = x.to(state.device), y.to(state.device)
                methods.fire(Event.BATCH_START, state)
                if not timed_step(state, epoch, step_log, log):
                    break
                if config.valid_curve_interval and progress.step % config.valid_curve_interval == 0:
                    record_valid_curve(state, epoch)
                if bar is not None:
                    bar.set_postfix(loss=f"{epoch.last:.3f}", tok_s=f"{epoch.tokens_per_second():,.0f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            end_epoch(state, epoch, run_dir / CHECKPOINT, log)
            if step_log is not None:
                step_log.flush()
    finally:
        if step_log is not None:
            step_log.close()
    return finish(state, log)


def timed_step(state: TrainState, epoch: EpochLosses, step_log: Optional[StepLog], log) -> bool:
    """``train_step``, priced by the FLOPs tracer on every ``flops_trace_interval``-th step; the
    timing of the untraced steps is the throughput (the tracer's own cost stays out of it)."""
    config, progress = state.config, state.progress
    traced = progress.step % config.flops_trace_interval == 0
    tracer = epoch.tracer if traced else None
    lr = state.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    going_on = train_step(state, tracer, epoch, log)
    elapsed = time.perf_counter() - start
    tokens = state.inputs.numel() * state.world.size
    epoch.time += elapsed
    epoch.all_tokens += tokens
    if traced:
        epoch.traced_steps += 1
    else:
        epoch.untraced_time += elapsed
        epoch.untraced_tokens += tokens
    if step_log is not None:
        record = state.step_record
        step_log.write(dict(step=progress.step, epoch=progress.epoch + 1, lr=lr, loss=record["loss"],
                            total_loss=record["total_loss"], grad_norm=record["grad_norm"],
                            tokens_per_second=tokens / max(elapsed, 1e-9), flops_traced=int(traced),
                            skipped=int(record["skipped"]), terms=record["terms"]))
    return going_on


def record_valid_curve(state: TrainState, epoch: EpochLosses) -> None:
    """One point of the validation curve: perplexity on the first ``method_eval_tokens``
    validation tokens after this step, with the training tokens and time so far (not timed)."""
    progress = state.progress
    nll, _ = state.evaluate(state.corpus.valid, max_tokens=state.config.method_eval_tokens)
    progress.valid_curve.append({"step": progress.step, "tokens": progress.train_tokens + epoch.all_tokens,
                                 "train_time": progress.train_time + epoch.time, "perplexity": math.exp(nll)})


def set_up(config, corpus: wt2.Corpus, checkpoint_path: Path, resume: bool, log) -> TrainState:
    """Device, threads, seeds, model (methods' MODEL_BUILT), optimizer, data, schedule; resume."""
    device = resolve_device(config.device)
    memory = PeakMemory(device)
    memory.start()
    world = distributed.world(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.architecture == "resnet_bk" and config.bk_mode != "causal" and not config.allow_noncausal:
        raise ValueError(
            f"{config.model_name}: bk_mode={config.bk_mode!r} reads future tokens, so its perplexity is not a "
            "language-model perplexity; pass --allow-noncausal (allow_noncausal: true) to train it anyway"
        )
    for flag, reason in config.left_out_methods.items():
        log(f"[{config.model_name}] {flag} {reason}")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = make_model(config, corpus.vocab_size).to(device)
    # An expert no token was routed to in a step, or a halted token's skipped block, has no
    # gradient: DDP must be told to expect that.
    forward = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=config.architecture == "resnet_bk")
               if world.distributed else model)
    state = TrainState(config=config, corpus=corpus, device=device, world=world, methods=ActiveMethods(config),
                       model=model, forward=forward, memory=memory)
    state.methods.fire(Event.MODEL_BUILT, state)
    state.optimizer = make_optimizer(model, config)
    train_tokens = wt2.limit_tokens(corpus.train, config.max_train_tokens, config.data_fraction)
    state.train_inputs, state.train_targets = distributed.shard_rows(*wt2.streams(train_tokens, config.batch_size), world)
    state.steps_per_epoch = wt2.num_windows(state.train_inputs, config.n_seq)
    # Methods that train on part of each epoch (active learning) shorten the schedule.
    planned = min([m.windows_per_epoch(config, state.steps_per_epoch) for m in state.methods.methods],
                  default=state.steps_per_epoch)
    state.total_steps = planned * config.epochs
    if config.max_steps is not None:
        state.total_steps = min(state.total_steps, config.max_steps)
    state.scheduler = make_scheduler(state.optimizer, config, state.total_steps)
    model.set_state_carry(config.carry_state)  # for the run (evaluation and the probes set their own)
    state.scaler = torch.amp.GradScaler(
        "cuda", enabled=config.use_mixed_precision and config.amp_dtype == "float16")
    if resume and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(f"--resume: {checkpoint_path} was written by a different configuration; "
                             "use the same settings or another --output-dir")
        model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        state.scheduler.load_state_dict(ckpt["scheduler"])
        state.scaler.load_state_dict(ckpt["scaler"])
        state.progress = Progress(**ckpt["progress"])
        _set_rng_state(ckpt["rng"])
        if world.is_main:
            log(f"[{config.model_name}] resumed from {checkpoint_path} after epoch {state.progress.epoch} "
                f"(step {state.progress.step})")
    return state


class EpochLosses:
    """The epoch so far: sums of the training NLL and of each named loss term over the successful
    steps; wall time and tokens of all steps and of the untraced ones (the throughput)."""

    def __init__(self):
        self.nll, self.tokens, self.steps, self.terms, self.last = 0.0, 0, 0, {}, math.nan
        self.consecutive_skips = 0
        self.time, self.all_tokens, self.untraced_time, self.untraced_tokens = 0.0, 0, 0.0, 0
        self.tracer, self.traced_steps = FlopsTracer(), 0  # priced at the end of the epoch

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


def train_step(state: TrainState, tracer: Optional[FlopsTracer], losses: EpochLosses, log) -> bool:
    """One optimizer step (skipped if the loss or gradient is not finite), priced by ``tracer``
    when one is given; False once the run must stop."""
    config, world, progress, methods = state.config, state.world, state.progress, state.methods
    x, y = state.inputs, state.targets
    local_count = int((y != wt2.IGNORE_INDEX).sum())
    (global_count,) = world.sum([local_count])
    state.optimizer.zero_grad(set_to_none=True)
    with tracer if tracer is not None else nullcontext():
        with state.forward_context():
            nll_sum, state.hidden = state.forward(x, y, fused_head=config.fused_head)
            # Normalised by the global token count (times the world size, which DDP's gradient
            # averaging divides out): exactly the gradient of the global batch's mean NLL.
            loss = nll_sum * (world.size / max(global_count, 1))
            state.aux_losses = aux = state.model.aux_losses()
            # The MoE routers' load balancing is part of ResNet-BK itself; the methods add theirs.
            state.loss_terms = {"load_balance": config.load_balance_weight * aux["load_balance"]} if aux else {}
            methods.fire(Event.LOSS, state)
            for term in state.loss_terms.values():
                loss = loss + term.to(loss.device)
        finite = world.all(bool(torch.isfinite(loss)))
        if finite:
            state.scaler.scale(loss).backward()
    grad_norm = math.nan
    if finite:
        methods.fire(Event.AFTER_BACKWARD, state)
        state.scaler.unscale_(state.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip))
        finite = world.all(math.isfinite(grad_norm))
    progress.step += 1
    terms = {k: float(v.detach()) for k, v in state.loss_terms.items()}
    state.step_record = {"loss": math.nan, "total_loss": float(loss.detach()), "grad_norm": grad_norm,
                         "skipped": not finite, "terms": terms}
    if finite:
        if tracer is not None:
            tracer.optimizer_step(state.optimizer, lambda: state.scaler.step(state.optimizer))
        else:
            state.scaler.step(state.optimizer)
        state.scaler.update()
        if _per_step(state.scheduler):
            state.scheduler.step()
        methods.fire(Event.AFTER_OPTIMIZER_STEP, state)
        losses.consecutive_skips = 0
        (step_nll,) = world.sum([nll_sum.item()])
        losses.add(step_nll, global_count, terms, float(loss.detach()))
        state.step_record["loss"] = step_nll / max(global_count, 1)
        return True
    progress.skipped += 1
    losses.consecutive_skips += 1
    if losses.consecutive_skips >= config.max_consecutive_skips:
        progress.stopped_early = (f"{losses.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                                  f"(at step {progress.step}); stopped, keeping what was measured")
        log(f"[{config.model_name}] {progress.stopped_early}")
        return False
    return True


def end_epoch(state: TrainState, losses: EpochLosses, checkpoint_path: Path, log) -> None:
    """Validation, the epoch's figures, EPOCH_END, the best weights, the checkpoint, one log line."""
    config, progress = state.config, state.progress
    elapsed = losses.time
    progress.train_time += elapsed
    progress.train_tokens += losses.all_tokens
    progress.untraced_time += losses.untraced_time
    progress.untraced_tokens += losses.untraced_tokens
    if losses.traced_steps:
        progress.flops = merge_reports(progress.flops, losses.tracer.report())
        progress.traced_steps += losses.traced_steps
    valid_nll, _ = state.evaluate(state.corpus.valid, label="validation")
    state.epoch_valid_perplexity = valid_ppl = math.exp(valid_nll)
    if not _per_step(state.scheduler):
        state.scheduler.step(valid_nll)
    train_loss = losses.nll / losses.tokens if losses.tokens else math.nan
    progress.epoch_losses.append(train_loss)
    progress.epoch_perplexities.append(valid_ppl)
    progress.epoch_times.append(elapsed)
    for name, total in losses.terms.items():
        progress.epoch_aux_losses.setdefault(name, []).append(total / max(losses.steps, 1))
    state.methods.fire(Event.EPOCH_END, state)
    if valid_ppl < progress.best_valid:
        progress.best_valid, progress.best_epoch = valid_ppl, progress.epoch + 1
        progress.best_model = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    progress.epoch += 1
    if state.world.is_main:
        save_checkpoint(checkpoint_path, {
            "config": config.to_dict(), "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict(),
            "progress": dataclasses.asdict(progress), "rng": _rng_state(state.device),
        })
        log(f"[{config.model_name}] epoch {progress.epoch}: train loss {train_loss:.4f}, valid ppl {valid_ppl:.2f}, "
            f"{elapsed:.1f} s, {losses.tokens_per_second():,.0f} tokens/s")


def finish(state: TrainState, log) -> BenchmarkResults:
    """The causality probe, then (best weights) the test perplexity, the methods' EVALUATION and
    EXPORT, the results. A model that fails the probe gets no language-model perplexity: its
    measured perplexities are kept under ``noncausal_perplexities`` only."""
    config, progress, model, device = state.config, state.progress, state.model, state.device
    if progress.best_model is not None:
        model.load_state_dict(progress.best_model)
    with model.state_carry(False):  # the probes compare single windows, each from a fresh state
        probe = probe_causality(model, state.corpus.vocab_size, config.n_seq, device=device)
    if not probe.causal:
        log(f"[{config.model_name}] the causality probe FAILED: {probe.summary()}. Its perplexities are not "
            "language-model perplexities and are reported under noncausal_perplexities only.")
    test_nll = state.evaluate(state.corpus.test, label="test")[0] if config.evaluate_test else math.nan
    with model.state_carry(False):
        reach = context_reach(model, state.corpus.valid, config.n_seq, device=device, context=state.forward_context)
    state.methods.fire(Event.EVALUATION, state)
    state.methods.fire(Event.EXPORT, state)
    size_mb, size_method = model.size_mb(), "parameter and buffer bytes in memory"
    exported = export_run(state)
    if exported is not None:
        size_mb = exported["bytes"] / 2**20
        size_method = f"size on disk of the exported model ({Path(exported['path']).name}: {exported['format']})"
    memory = state.memory.figures()
    counts = model.parameter_counts()
    versions, git = environment()
    flops = _flops_fields(progress.flops, progress.traced_steps, progress.step, state.world)
    last_loss = progress.epoch_losses[-1] if progress.epoch_losses else math.nan
    perplexities = dict(final_perplexity=math.exp(test_nll), best_perplexity=progress.best_valid,
                        epoch_perplexities=list(progress.epoch_perplexities),
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
        model_name=config.model_name, config=config.to_dict(), final_loss=last_loss, training_time=progress.train_time,
        peak_memory_mb=memory["peak_mb"], peak_memory_above_baseline_mb=memory["above_baseline_mb"],
        model_size_mb=size_mb, model_size_method=size_method, epoch_losses=progress.epoch_losses, epoch_times=progress.epoch_times,
        best_epoch=progress.best_epoch, train_loss=last_loss,
        train_perplexity=math.exp(last_loss) if math.isfinite(last_loss) else math.nan,
        tokens_per_second=tokens_per_second, throughput_method=throughput_method,
        steps=progress.step, skipped_steps=progress.skipped, stopped_early=progress.stopped_early,
        vocab_size=state.corpus.vocab_size, parameters=counts["total"], non_embedding_parameters=counts["non_embedding"],
        causal=probe.causal, perplexity_is_lm=probe.causal, causality_probe=probe.summary(),
        noncausal_perplexities=noncausal, peak_memory_method=memory["method"], dataset=state.corpus.describe(),
        device=str(device), versions=versions, git_revision=git, epoch_aux_losses=progress.epoch_aux_losses,
        methods={**{flag: {"left_out": why} for flag, why in config.left_out_methods.items()}, **progress.figures},
        valid_curve=progress.valid_curve, context_reach=reach, **perplexities, **flops,
    )


def export_run(state: TrainState) -> Optional[dict]:
    """With quantization or pruning on: the exported model (``methods.export``), written beside
    the checkpoint; its figures go to each of those methods' figures. None otherwise."""
    from ..methods import export, pruning, quantization

    flags = [m.flag for m in state.methods.methods if m.flag in ("use_quantization", "use_pruning")]
    if not flags or not state.world.is_main or state.run_dir is None:
        return None
    scales = quantization.int8_scales(state.model) if "use_quantization" in flags else None
    prefixes = tuple(pruning.removed_expert_prefixes(state.model))
    removed = tuple(k for k in export.effective_state_dict(state.model) if prefixes and k.startswith(prefixes))
    exported = export.export_model(state.model, state.run_dir / "exported_model.pt", int8_scales=scales, removed=removed)
    for flag in flags:
        state.figures.setdefault(flag, {})["export"] = exported
    return exported


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


def environment() -> tuple[dict, Optional[str]]:
    """Versions of what ran, and the git revision of the source tree (None outside a checkout)."""
    import platform
    import subprocess

    import numpy

    from .. import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                "resnetbk": __version__}
    try:
        import datasets

        versions["datasets"] = datasets.__version__
    except ImportError:  # pragma: no cover - a dependency; reported, not required here
        pass
    if torch.cuda.is_available():
        versions["cuda"] = torch.version.cuda
    preloaded = [Path(p).name for p in os.environ.get("LD_PRELOAD", "").split(":") if "malloc" in p]
    versions["allocator"] = ", ".join(preloaded) or "the C library's malloc"
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                  capture_output=True, text=True, timeout=10)
        git = revision.stdout.strip() if revision.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        git = None
    return versions, git


def run_and_save(config, data_dir: Optional[str], run_dir: str, result_path: str, resume: bool,
                 quiet: bool, tensorboard: bool = False) -> None:
    """Worker-process entry point: load the data, train one model, write its results JSON and,
    beside it, ``<model>_steps.csv`` (and TensorBoard events under ``runs/<model>/tensorboard``)."""
    corpus = wt2.load_corpus(data_dir)
    steps_csv = Path(result_path).with_name(f"{config.model_name}_steps.csv")
    results = train(config, corpus, run_dir, resume=resume, quiet=quiet, steps_csv=steps_csv,
                    tensorboard_dir=Path(run_dir) / "tensorboard" if tensorboard else None)
    w = distributed.world(resolve_device(config.device))
    if w.is_main:
        results.save(result_path)
    w.barrier()
