"""One training step of the benchmark's models, through the loop's own step (``train.step.train_step``).

    RESNETBK_BENCH_THREADS=2 scripts/dev bench -k train_step

Shape: B 32, N 128, d 64, 4 layers, vocabulary 33,278 (WikiText-2's), both architectures. Side by
side in one process: the plain LM head (full logits, then cross-entropy) against the fused
chunked head (``models.head``), and the fused head with the FLOPs tracer on, interleaved step by
step. For each: the median step time (tokens/s) and the peak resident memory of its steps (the
high-water mark reset before each step, so the figures share one baseline: imports, the three
models and their optimizer states). The allocator is the process's: compare runs with and without
``RESNETBK_ALLOCATOR=system`` (``scripts/dev`` preloads tcmalloc or jemalloc when installed).
The summary prints the ratios; no timing is asserted (shared machines are noisy).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import defaultdict

import pytest
import torch

from conftest import THREADS
from resnetbk import data as wt2
from resnetbk.bench.config import BenchmarkConfig, model_config
from resnetbk.bench.recipe import make_model
from resnetbk.flops import FlopsTracer
from resnetbk.measure.memory import peak_rss_mb, reset_peak_rss
from resnetbk.models import ModelOptions
from resnetbk.train.optim import make_optimizer
from resnetbk.train.step import train_step

VOCAB, BATCH, SEQ, D_MODEL, LAYERS = 33_278, 32, 128, 64, 4
ROUNDS = 7
ALL_VARIANTS = {  # name -> (fused head, traced)
    "plain head": (False, False),
    "fused head": (True, False),
    "fused head, traced": (True, True),
}
#: RESNETBK_STEP_VARIANTS="fused head" (";"-separated) runs a subset (e.g. to measure one variant's peak memory
#: alone: an allocator that keeps freed memory, such as tcmalloc, shares one peak between them).
VARIANTS = {name: ALL_VARIANTS[name] for name in
            os.environ.get("RESNETBK_STEP_VARIANTS", ";".join(ALL_VARIANTS)).split(";")}
ARCHITECTURES = {"transformer": "transformer_baseline", "resnet_bk": "resnet_bk_baseline"}

#: (architecture, variant) -> {"seconds": median step time, "peak_mb": ..., "tokens_per_s": ...}
RESULTS: dict = defaultdict(dict)


def _window() -> tuple:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH * SEQ + 1,), generator=gen)  # one window, reused
    inputs, targets = wt2.streams(tokens, BATCH)
    return next(iter(wt2.windows(inputs, targets, SEQ)))


def _stepper(architecture: str, fused: bool, traced: bool, folder):
    base = BenchmarkConfig(model=ModelOptions(d_model=D_MODEL, n_layers=LAYERS, n_seq=SEQ), batch_size=BATCH,
                           device="cpu", fused_head=fused)
    config = model_config(ARCHITECTURES[architecture], base)
    torch.manual_seed(config.seed)
    model = make_model(config, VOCAB)
    optimizer = make_optimizer(model, config)
    x, y = _window()
    tracer = FlopsTracer() if traced else None

    def step() -> None:
        outcome = train_step(model, optimizer, x, y, grad_clip=config.grad_clip, fused_head=fused, tracer=tracer,
                             load_balance_weight=config.load_balance_weight)
        assert outcome.taken and math.isfinite(outcome.total_loss)

    return step


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_train_step(benchmark, architecture, tmp_path):
    """The variants interleaved step by step (A B C A B C ...), so that the machine's slow
    moments hit them alike; each step's peak RSS measured from a reset just before it."""
    steppers = {name: _stepper(architecture, *flags, tmp_path) for name, flags in VARIANTS.items()}
    times, peaks = defaultdict(list), defaultdict(list)

    def one_round() -> None:
        for name, step in steppers.items():
            reset_ok = reset_peak_rss()
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            peaks[name].append(peak_rss_mb() if reset_ok else math.nan)

    for step in steppers.values():  # the first step allocates the optimizer's state
        step()
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    for name in VARIANTS:
        seconds = statistics.median(times[name])
        RESULTS[architecture][name] = {"seconds": seconds, "tokens_per_s": BATCH * SEQ / seconds,
                                       "peak_mb": max(peaks[name])}


def pytest_terminal_summary_lines() -> list:
    lines = [f"Training step, B {BATCH} x N {SEQ}, d {D_MODEL}, {LAYERS} layers, vocabulary {VOCAB:,}, "
             f"{THREADS} thread(s), allocator {os.path.basename(os.environ.get('LD_PRELOAD', '')) or 'glibc malloc'} "
             "(median step; peak RSS of the process during the variant's steps)"]
    for architecture, variants in RESULTS.items():
        for name, r in variants.items():
            lines.append(f"  {architecture:12s} {name:20s} {r['seconds'] * 1e3:9.1f} ms  {r['tokens_per_s']:9,.0f} tokens/s  "
                         f"peak RSS {r['peak_mb']:8,.0f} MiB")
        plain, fused, traced = (variants.get(v) for v in ALL_VARIANTS)
        if plain and fused:
            lines.append(f"  {architecture:12s} fused / plain: {fused['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s, "
                         f"peak RSS {plain['peak_mb'] - fused['peak_mb']:,.0f} MiB lower")
        if fused and traced:
            lines.append(f"  {architecture:12s} FLOPs tracer overhead: "
                         f"{100 * (traced['seconds'] / fused['seconds'] - 1):+.1f}% of the step")
    return lines
