"""Training and evaluation of one model: a plain loop, checkpointed after every epoch.

Protocol (the original benchmark's, made honest): AdamW, cosine schedule from ``lr`` to ``lr * min_lr_ratio``
with optional linear warmup, gradient clipping, window order shuffled by a seeded generator each
epoch. Validation perplexity after every epoch (eval mode, token-weighted over the whole split);
test perplexity once, from the best-validation weights. A step whose loss or gradient is not
finite is skipped and counted; too many in a row stop the run, which keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .. import data as wt2
from ..causality import probe_causality
from ..flops import FlopsTracer, component_summary, merge_reports
from ..methods import ActiveMethods, Event
from ..models import build_model
from . import distributed
from .config import model_options
from .results import BenchmarkResults

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def make_model(config, vocab_size: int):
    return build_model(model_options(config, vocab_size))


def parameter_groups(model: torch.nn.Module, decay_norms_biases_embeddings: bool, weight_decay: float) -> list:
    """AdamW's groups: weight decay on weight matrices only, unless ``decay_norms_biases_embeddings``.
    (The FLOPs estimate prices the optimizer from these same groups.)"""
    embeddings = {id(model.token_embedding.weight), id(model.position_embedding.weight)}
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        plain = p.dim() >= 2 and id(p) not in embeddings
        (decay if plain or decay_norms_biases_embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameter_groups(model, config.decay_norms_biases_embeddings, config.weight_decay),
                             lr=config.lr)


def lr_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then a cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


#: Evaluation computes logits a slice of positions at a time, keeping each logits block under
#: ~24 MiB: larger blocks are fresh mmap'd memory on every allocation (glibc returns them to
#: the kernel), and page faults then cost more than the arithmetic.
EVAL_LOGITS_BYTES = 24 * 2**20


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
    rows_per_block = max(1, EVAL_LOGITS_BYTES // (4 * model.lm_head.out_features))
    total, count = 0.0, 0
    traced = tracer if tracer is not None else nullcontext()
    for x, y in wt2.windows(inputs, targets, config.n_seq):
        with traced, context():
            hidden = model(x.to(device), features_only=True).flatten(0, 1)
            y = y.to(device).flatten()
            for h, t in zip(hidden.split(rows_per_block), y.split(rows_per_block)):
                logits = model.lm_head(h)
                total += F.cross_entropy(logits.float(), t, ignore_index=wt2.IGNORE_INDEX, reduction="sum").item()
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


def _progress(total: int, desc: str, quiet: bool):
    if quiet or not sys.stderr.isatty() or not distributed.is_main_process():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


@dataclass
class Progress:
    """What the run has done so far: checkpointed after every epoch, restored by ``--resume``."""

    epoch: int = 0
    step: int = 0
    skipped: int = 0
    train_time: float = 0.0
    train_tokens: int = 0
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
    logits: Any = None
    aux_losses: dict = field(default_factory=dict)  # the model's named auxiliary losses (unweighted)
    loss_terms: dict = field(default_factory=dict)
    epoch_valid_perplexity: float = math.nan

    @property
    def figures(self) -> dict:
        return self.progress.figures

    def forward_context(self):
        return self.methods.forward_context(self.device)

    def evaluate(self, tokens, *, max_tokens=None, tracer=None, on_batch=None) -> tuple[float, int]:
        return evaluate(self.model, tokens, self.config, self.device, context=self.forward_context,
                        max_tokens=max_tokens, tracer=tracer, on_batch=on_batch)


def train(config, corpus: wt2.Corpus, run_dir: str | Path, *, resume: bool = False, quiet: bool = False,
          log=print) -> BenchmarkResults:
    """Train ``config``'s model on ``corpus`` and return what was measured."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = set_up(config, corpus, run_dir / CHECKPOINT, resume, log)
    if not state.world.is_main:
        log = lambda *_: None  # noqa: E731 - rank 0 speaks for the run
    config, progress, methods = state.config, state.progress, state.methods
    while progress.epoch < config.epochs and progress.stopped_early is None and progress.step < state.total_steps:
        state.window_order = torch.randperm(
            state.steps_per_epoch, generator=torch.Generator().manual_seed(config.seed * 1000 + progress.epoch))
        methods.fire(Event.EPOCH_START, state)
        bar = _progress(state.steps_per_epoch, f"{config.model_name} epoch {progress.epoch + 1}/{config.epochs}", quiet)
        tracer = FlopsTracer()  # prices every executed training step (not evaluation)
        start, tokens, losses = time.perf_counter(), 0, EpochLosses()
        for x, y in wt2.windows(state.train_inputs, state.train_targets, config.n_seq, state.window_order):
            if progress.step >= state.total_steps:
                break
            state.inputs, state.targets = x.to(state.device), y.to(state.device)
            methods.fire(Event.BATCH_START, state)
            if not train_step(state, tracer, losses, log):
                break
            tokens += x.numel() * state.world.size
            if bar is not None:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{losses.last:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        end_epoch(state, tracer, time.perf_counter() - start, tokens, losses, run_dir / CHECKPOINT, log)
    return finish(state, log)


def set_up(config, corpus: wt2.Corpus, checkpoint_path: Path, resume: bool, log) -> TrainState:
    """Device, threads, seeds, model (methods' MODEL_BUILT), optimizer, data, schedule; resume."""
    device = resolve_device(config.device)
    world = distributed.world(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.architecture == "resnet_bk" and config.bk_mode != "causal" and not config.allow_noncausal:
        raise ValueError(
            f"{config.model_name}: bk_mode={config.bk_mode!r} reads future tokens, so its perplexity is not a "
            "language-model perplexity; pass --allow-noncausal (allow_noncausal: true) to train it anyway"
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = make_model(config, corpus.vocab_size).to(device)
    # An expert no token was routed to in a step, or a halted token's skipped block, has no
    # gradient: DDP must be told to expect that.
    forward = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=config.architecture == "resnet_bk")
               if world.distributed else model)
    state = TrainState(config=config, corpus=corpus, device=device, world=world, methods=ActiveMethods(config),
                       model=model, forward=forward)
    state.methods.fire(Event.MODEL_BUILT, state)
    state.optimizer = make_optimizer(model, config)
    train_tokens = wt2.limit_tokens(corpus.train, config.max_train_tokens, config.data_fraction)
    state.train_inputs, state.train_targets = distributed.shard_rows(*wt2.streams(train_tokens, config.batch_size), world)
    state.steps_per_epoch = wt2.num_windows(state.train_inputs, config.n_seq)
    state.total_steps = state.steps_per_epoch * config.epochs
    if config.max_steps is not None:
        state.total_steps = min(state.total_steps, config.max_steps)
    state.scheduler = torch.optim.lr_scheduler.LambdaLR(
        state.optimizer, lambda s: lr_factor(s, state.total_steps, config.warmup_steps, config.min_lr_ratio)
    )
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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return state


class EpochLosses:
    """Sums of the epoch's training NLL and of each named loss term, over the successful steps."""

    def __init__(self):
        self.nll, self.tokens, self.steps, self.terms, self.last = 0.0, 0, 0, {}, math.nan
        self.consecutive_skips = 0

    def add(self, nll: float, tokens: int, terms: dict, loss: float) -> None:
        self.nll, self.tokens, self.steps, self.last = self.nll + nll, self.tokens + tokens, self.steps + 1, loss
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value


def train_step(state: TrainState, tracer, losses: EpochLosses, log) -> bool:
    """One optimizer step (skipped if the loss or gradient is not finite); False once the run must stop."""
    config, world, progress, methods = state.config, state.world, state.progress, state.methods
    x, y = state.inputs, state.targets
    local_count = int((y != wt2.IGNORE_INDEX).sum())
    (global_count,) = world.sum([local_count])
    state.optimizer.zero_grad(set_to_none=True)
    with tracer:
        with state.forward_context():
            state.logits = state.forward(x)
            nll_sum = F.cross_entropy(state.logits.float().flatten(0, 1), y.flatten(),
                                      ignore_index=wt2.IGNORE_INDEX, reduction="sum")
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
    if finite:
        methods.fire(Event.AFTER_BACKWARD, state)
        state.scaler.unscale_(state.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), config.grad_clip)
        finite = world.all(bool(torch.isfinite(grad_norm)))
    progress.step += 1
    if finite:
        tracer.optimizer_step(state.optimizer, lambda: state.scaler.step(state.optimizer))
        state.scaler.update()
        state.scheduler.step()
        methods.fire(Event.AFTER_OPTIMIZER_STEP, state)
        losses.consecutive_skips = 0
        (step_nll,) = world.sum([nll_sum.item()])
        losses.add(step_nll, global_count, {k: float(v.detach()) for k, v in state.loss_terms.items()}, float(loss.detach()))
        return True
    progress.skipped += 1
    losses.consecutive_skips += 1
    if losses.consecutive_skips >= config.max_consecutive_skips:
        progress.stopped_early = (f"{losses.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                                  f"(at step {progress.step}); stopped, keeping what was measured")
        log(f"[{config.model_name}] {progress.stopped_early}")
        return False
    return True


def end_epoch(state: TrainState, tracer, elapsed: float, tokens: int, losses: EpochLosses, checkpoint_path: Path,
              log) -> None:
    """Validation, the epoch's figures, EPOCH_END, the best weights, the checkpoint, one log line."""
    config, progress = state.config, state.progress
    progress.train_time += elapsed
    progress.train_tokens += tokens
    progress.flops = merge_reports(progress.flops, tracer.report())
    valid_nll, _ = state.evaluate(state.corpus.valid)
    state.epoch_valid_perplexity = valid_ppl = math.exp(valid_nll)
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
            f"{elapsed:.1f} s, {tokens / max(elapsed, 1e-9):,.0f} tokens/s")


def finish(state: TrainState, log) -> BenchmarkResults:
    """Best weights, test perplexity, the methods' EVALUATION and EXPORT, the causality probe, results."""
    config, progress, model, device = state.config, state.progress, state.model, state.device
    if progress.best_model is not None:
        model.load_state_dict(progress.best_model)
    test_nll, _ = state.evaluate(state.corpus.test)
    state.methods.fire(Event.EVALUATION, state)
    state.methods.fire(Event.EXPORT, state)
    probe = probe_causality(model, state.corpus.vocab_size, config.n_seq, device=device)
    if not probe.causal and state.world.is_main:
        log(f"[{config.model_name}] WARNING: the causality probe failed: {probe.summary()}. "
            "Its perplexity is NOT a language-model perplexity.")
    if device.type == "cuda":
        peak_mb, method = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        method = "peak RSS of the process (ru_maxrss)"
    counts = model.parameter_counts()
    versions, git = environment()
    flops = _flops_fields(progress.flops, progress.step, state.world)
    last_loss = progress.epoch_losses[-1] if progress.epoch_losses else math.nan
    return BenchmarkResults(
        model_name=config.model_name, config=config.to_dict(), final_loss=last_loss,
        final_perplexity=math.exp(test_nll), best_perplexity=progress.best_valid, training_time=progress.train_time,
        peak_memory_mb=peak_mb, model_size_mb=model.size_mb(), epoch_losses=progress.epoch_losses,
        epoch_perplexities=progress.epoch_perplexities, epoch_times=progress.epoch_times,
        valid_perplexity=progress.epoch_perplexities[-1] if progress.epoch_perplexities else math.nan,
        test_perplexity=math.exp(test_nll), best_valid_perplexity=progress.best_valid, best_epoch=progress.best_epoch,
        train_loss=last_loss, train_perplexity=math.exp(last_loss) if math.isfinite(last_loss) else math.nan,
        tokens_per_second=progress.train_tokens / progress.train_time if progress.train_time else 0.0,
        steps=progress.step, skipped_steps=progress.skipped, stopped_early=progress.stopped_early,
        vocab_size=state.corpus.vocab_size, parameters=counts["total"], non_embedding_parameters=counts["non_embedding"],
        causal=probe.causal, perplexity_is_lm=probe.causal, causality_probe=probe.summary(),
        peak_memory_method=method, dataset=state.corpus.describe(), device=str(device),
        versions=versions, git_revision=git, epoch_aux_losses=progress.epoch_aux_losses,
        methods=progress.figures, **flops,
    )


def _flops_fields(report: Optional[dict], steps: int, world) -> dict:
    """The results' FLOPs fields from the merged trace of every executed training step.

    Per-step figures are averages over the executed steps (the last window of an epoch is
    shorter); the total is the sum over all of them and over all processes.
    """
    if report is None or steps == 0:
        return {}
    forward, backward, optimizer = world.sum([report["by_phase"].get(p, 0) for p in ("forward", "backward", "optimizer")])
    return dict(
        forward_flops=round(forward / steps), backward_flops=round(backward / steps),
        optimizer_flops=round(optimizer / steps), total_flops_per_step=round((forward + backward + optimizer) / steps),
        total_training_flops=int(forward + backward + optimizer),
        flops_breakdown={
            "per_step_by_component": component_summary(report["by_component"], steps),
            "by_category": report["by_category"],
            "unknown_ops": report["unknown"],
            "traced_steps": steps,
            "scope": "training steps as executed (forward, backward, optimizer.step; gradient clipping and "
                     "evaluation not counted); components and categories are this process's share",
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
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                  capture_output=True, text=True, timeout=10)
        git = revision.stdout.strip() if revision.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        git = None
    return versions, git


def run_and_save(config, data_dir: Optional[str], run_dir: str, result_path: str, resume: bool,
                 quiet: bool) -> None:
    """Worker-process entry point: load the data, train one model, write its results JSON."""
    corpus = wt2.load_corpus(data_dir)
    results = train(config, corpus, run_dir, resume=resume, quiet=quiet)
    w = distributed.world(resolve_device(config.device))
    if w.is_main:
        results.save(result_path)
    w.barrier()
