"""Training and evaluation of one model: a plain loop, checkpointed after every epoch.

Protocol (the seed's, made honest): AdamW, cosine schedule from ``lr`` to ``lr * min_lr_ratio``
with optional linear warmup, gradient clipping, window order shuffled by a seeded generator each
epoch. Validation perplexity after every epoch (eval mode, token-weighted over the whole split);
test perplexity once, from the best-validation weights. A step whose loss or gradient is not
finite is skipped and counted; too many in a row stop the run, which keeps what it measured.
"""

from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .. import data as wt2
from ..causality import probe_causality
from ..flops import FlopsTracer, component_summary, merge_reports
from ..models import build_model
from . import distributed
from .config import BenchmarkConfig
from .results import BenchmarkResults

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def make_model(config: BenchmarkConfig, vocab_size: int):
    return build_model(
        config.architecture, vocab_size, config.d_model, config.n_layers, config.n_seq, dropout=config.dropout,
        tie_embeddings=config.tie_embeddings, n_heads=config.n_heads, num_experts=config.num_experts,
        bk_channels=config.bk_channels, bk_mode=config.bk_mode, potential_limit=config.potential_limit,
        analytic_gradient=config.use_analytic_gradient,
    )


def make_optimizer(model: torch.nn.Module, config: BenchmarkConfig) -> torch.optim.AdamW:
    """Weight decay on weight matrices only, unless ``decay_norms_biases_embeddings``."""
    embeddings = {id(model.token_embedding.weight), id(model.position_embedding.weight)}
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        plain = p.dim() >= 2 and id(p) not in embeddings
        (decay if plain or config.decay_norms_biases_embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr)


def lr_factor(step: int, total_steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then a cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_context(config: BenchmarkConfig, device: torch.device):
    if not config.use_mixed_precision:
        return nullcontext()
    dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


#: Evaluation computes logits a slice of positions at a time, keeping each logits block under
#: ~24 MiB: larger blocks are fresh mmap'd memory on every allocation (glibc returns them to
#: the kernel), and page faults then cost more than the arithmetic.
EVAL_LOGITS_BYTES = 24 * 2**20


@torch.no_grad()
def evaluate(model, tokens: torch.Tensor, config: BenchmarkConfig, device: torch.device) -> tuple[float, int]:
    """Mean NLL per token over every (token, next token) pair of ``tokens``, and their count."""
    model.eval()
    inputs, targets = wt2.streams(tokens, config.eval_batch_size)
    rows_per_block = max(1, EVAL_LOGITS_BYTES // (4 * model.lm_head.out_features))
    total, count = 0.0, 0
    for x, y in wt2.windows(inputs, targets, config.n_seq):
        with autocast_context(config, device):
            hidden = model.features(x.to(device)).flatten(0, 1)
        y = y.to(device).flatten()
        for h, t in zip(hidden.split(rows_per_block), y.split(rows_per_block)):
            with autocast_context(config, device):
                logits = model.lm_head(h)
            total += F.cross_entropy(logits.float(), t, ignore_index=wt2.IGNORE_INDEX, reduction="sum").item()
        count += int((y != wt2.IGNORE_INDEX).sum())
    model.train()
    return total / count, count


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


def train(config: BenchmarkConfig, corpus: wt2.Corpus, run_dir: str | Path, *, resume: bool = False,
          quiet: bool = False, log=print) -> BenchmarkResults:
    """Train ``config``'s model on ``corpus`` and return what was measured."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    world = distributed.world(device)
    if not world.is_main:
        log = lambda *_: None  # noqa: E731 - rank 0 speaks for the run
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if config.use_mixed_precision and config.amp_dtype == "float16" and device.type != "cuda":
        raise ValueError("amp_dtype: float16 autocast needs a CUDA device (it uses a GradScaler); use bfloat16 on CPU")
    if config.architecture == "resnet_bk" and config.bk_mode != "causal" and not config.allow_noncausal:
        raise ValueError(
            f"{config.model_name}: bk_mode={config.bk_mode!r} reads future tokens, so its perplexity is not a "
            "language-model perplexity; pass --allow-noncausal (allow_noncausal: true) to train it anyway"
        )
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    model = make_model(config, corpus.vocab_size).to(device)
    optimizer = make_optimizer(model, config)
    train_tokens = wt2.limit_tokens(corpus.train, config.max_train_tokens, config.data_fraction)
    inputs, targets = distributed.shard_rows(*wt2.streams(train_tokens, config.batch_size), world)
    # An expert no token was routed to in a step has no gradient: DDP must be told to expect that.
    forward = (torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=config.architecture == "resnet_bk")
               if world.distributed else model)
    steps_per_epoch = wt2.num_windows(inputs, config.n_seq)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, config.warmup_steps, config.min_lr_ratio)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=config.use_mixed_precision and config.amp_dtype == "float16")

    state = {"epoch": 0, "step": 0, "skipped": 0, "train_time": 0.0, "train_tokens": 0, "epoch_losses": [],
             "epoch_perplexities": [], "epoch_times": [], "best_valid": math.inf, "best_epoch": 0, "best_model": None,
             "stopped_early": None, "flops": None}
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(f"--resume: {checkpoint_path} was written by a different configuration; "
                             "use the same settings or another --output-dir")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        _set_rng_state(ckpt["rng"])
        log(f"[{config.model_name}] resumed from {checkpoint_path} after epoch {state['epoch']} (step {state['step']})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    consecutive_skips = 0
    while state["epoch"] < config.epochs and state["stopped_early"] is None and state["step"] < total_steps:
        epoch = state["epoch"]
        order = torch.randperm(steps_per_epoch, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        bar = _progress(steps_per_epoch, f"{config.model_name} epoch {epoch + 1}/{config.epochs}", quiet)
        start = time.perf_counter()
        loss_sum, loss_count, epoch_tokens = 0.0, 0, 0
        tracer = FlopsTracer()  # prices every executed training step (not evaluation)
        for x, y in wt2.windows(inputs, targets, config.n_seq, order):
            if state["step"] >= total_steps:
                break
            x, y = x.to(device), y.to(device)
            local_count = int((y != wt2.IGNORE_INDEX).sum())
            (global_count,) = world.sum([local_count])
            optimizer.zero_grad(set_to_none=True)
            with tracer:
                with autocast_context(config, device):
                    logits = forward(x)
                    nll_sum = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(),
                                              ignore_index=wt2.IGNORE_INDEX, reduction="sum")
                    # Normalised by the global token count (times the world size, which DDP's
                    # gradient averaging divides out): exactly the gradient of the global batch's mean NLL.
                    loss = nll_sum * (world.size / max(global_count, 1))
                    loss = loss + config.load_balance_weight * model.aux_loss().to(loss.device)
                finite = world.all(bool(torch.isfinite(loss)))
                if finite:
                    scaler.scale(loss).backward()
            if finite:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                finite = world.all(bool(torch.isfinite(grad_norm)))
            if finite:
                tracer.optimizer_step(optimizer, lambda: scaler.step(optimizer))
                scaler.update()
                scheduler.step()
                consecutive_skips = 0
                (step_nll,) = world.sum([nll_sum.item()])
                loss_sum += step_nll
                loss_count += global_count
            else:
                state["skipped"] += 1
                consecutive_skips += 1
                if consecutive_skips >= config.max_consecutive_skips:
                    state["step"] += 1  # the attempted step counts, as in the normal path below
                    state["stopped_early"] = (f"{consecutive_skips} consecutive steps had a non-finite loss or gradient "
                                              f"(at step {state['step']}); stopped, keeping what was measured")
                    log(f"[{config.model_name}] {state['stopped_early']}")
                    break
            state["step"] += 1
            epoch_tokens += x.numel() * world.size
            if bar is not None:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{epoch_tokens / max(elapsed, 1e-9):,.0f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - start
        state["train_time"] += elapsed
        state["train_tokens"] += epoch_tokens
        state["flops"] = merge_reports(state["flops"], tracer.report())
        valid_nll, _ = evaluate(model, corpus.valid, config, device)
        valid_ppl = math.exp(valid_nll)
        train_loss = loss_sum / loss_count if loss_count else math.nan
        state["epoch_losses"].append(train_loss)
        state["epoch_perplexities"].append(valid_ppl)
        state["epoch_times"].append(elapsed)
        if valid_ppl < state["best_valid"]:
            state["best_valid"], state["best_epoch"] = valid_ppl, epoch + 1
            state["best_model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["epoch"] = epoch + 1
        if world.is_main:
            save_checkpoint(checkpoint_path, {
                "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state,
                "rng": _rng_state(device),
            })
        log(f"[{config.model_name}] epoch {epoch + 1}: train loss {train_loss:.4f}, valid ppl {valid_ppl:.2f}, "
            f"{elapsed:.1f} s, {epoch_tokens / max(elapsed, 1e-9):,.0f} tokens/s")

    if state["best_model"] is not None:
        model.load_state_dict(state["best_model"])
    test_nll, _ = evaluate(model, corpus.test, config, device)
    probe = probe_causality(model, corpus.vocab_size, config.n_seq, device=device)
    if not probe.causal:
        log(f"[{config.model_name}] WARNING: the causality probe failed: {probe.summary()}. "
            "Its perplexity is NOT a language-model perplexity.")
    if device.type == "cuda":
        peak_mb, method = torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        method = "peak RSS of the process (ru_maxrss)"
    counts = model.parameter_counts()
    versions, git = environment()
    flops = _flops_fields(state["flops"], state["step"], world)
    last_loss = state["epoch_losses"][-1] if state["epoch_losses"] else math.nan
    return BenchmarkResults(
        model_name=config.model_name, config=config.to_dict(), final_loss=last_loss,
        final_perplexity=math.exp(test_nll), best_perplexity=state["best_valid"], training_time=state["train_time"],
        peak_memory_mb=peak_mb, model_size_mb=model.size_mb(), epoch_losses=state["epoch_losses"],
        epoch_perplexities=state["epoch_perplexities"], epoch_times=state["epoch_times"],
        valid_perplexity=state["epoch_perplexities"][-1] if state["epoch_perplexities"] else math.nan,
        test_perplexity=math.exp(test_nll), best_valid_perplexity=state["best_valid"], best_epoch=state["best_epoch"],
        train_loss=last_loss, train_perplexity=math.exp(last_loss) if math.isfinite(last_loss) else math.nan,
        tokens_per_second=state["train_tokens"] / state["train_time"] if state["train_time"] else 0.0,
        steps=state["step"], skipped_steps=state["skipped"], stopped_early=state["stopped_early"],
        vocab_size=corpus.vocab_size, parameters=counts["total"], non_embedding_parameters=counts["non_embedding"],
        causal=probe.causal, perplexity_is_lm=probe.causal, causality_probe=probe.summary(),
        peak_memory_method=method, dataset=corpus.describe(), device=str(device),
        versions=versions, git_revision=git, **flops,
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


def run_and_save(config: BenchmarkConfig, data_dir: Optional[str], run_dir: str, result_path: str, resume: bool,
                 quiet: bool) -> None:
    """Worker-process entry point: load the data, train one model, write its results JSON."""
    corpus = wt2.load_corpus(data_dir)
    results = train(config, corpus, run_dir, resume=resume, quiet=quiet)
    w = distributed.world(resolve_device(config.device))
    if w.is_main:
        results.save(result_path)
    w.barrier()
