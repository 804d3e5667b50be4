"""Benchmark plumbing: thread count, device, and a summary table of throughput and speed-ups.

    RESNETBK_BENCH_THREADS  threads for torch and the Rust kernels (default 1: per-core figures)
    RESNETBK_BENCH_DEVICE   cpu (default) or cuda
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

THREADS = int(os.environ.get("RESNETBK_BENCH_THREADS", "1"))
DEVICE = os.environ.get("RESNETBK_BENCH_DEVICE", "cpu")

# (case, implementation, phase) -> median seconds, filled by the benchmarks.
MEDIANS: dict = {}


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


def record(case, impl, phase, benchmark):
    MEDIANS[(case, impl, phase)] = benchmark.stats.stats.median


def _comparisons(width, impls):
    """The ratios a case's summary states: rust over the others, triton against one attention layer."""
    if "triton" in impls and "attention_layer" in impls:
        yield (f"    triton / one attention layer of width {width}: {impls['triton'] / impls['attention_layer']:.2f}x "
               "the time (target: at most 1 at 32 x 128)")
    if "rust" in impls:
        for other in ("torch", "torch_sweep", "torch_scan", "autograd", "seed_autograd", "seed_hybrid"):
            if other in impls:
                yield f"    speed-up of rust over {other}: {impls[other] / impls['rust']:,.1f}x"


def pytest_terminal_summary(terminalreporter):
    import sys

    step_bench = sys.modules.get("test_train_step")
    if step_bench is not None and step_bench.RESULTS:
        terminalreporter.write_line("")
        for line in step_bench.pytest_terminal_summary_lines():
            terminalreporter.write_line(line)
    if not MEDIANS:
        return
    write = terminalreporter.write_line
    write("")
    mode = os.environ.get("RESNETBK_BENCH_MODE", "causal")
    write(f"BK-Core throughput on {DEVICE}, {THREADS} thread(s), float32, {mode} "
          "(M elements/s per thread; median times)")
    by_case = defaultdict(dict)
    for (case, impl, phase), t in MEDIANS.items():
        if phase != "linearity":  # reported on its own line below
            by_case[(case, phase)][impl] = t
    for (case, phase), impls in sorted(by_case.items(), key=lambda kv: (kv[0][0][0] * kv[0][0][1], kv[0][1])):
        b, n = case
        write(f"  B x N = {b} x {n:,}  [{phase}]")
        for impl, t in sorted(impls.items(), key=lambda kv: kv[1]):
            rate = b * n / t / 1e6 / (THREADS if DEVICE == "cpu" else 1)
            write(f"    {impl:22s} {t * 1e3:12.3f} ms {rate:12.2f} M el/s")
        for line in _comparisons(b, impls):
            write(line)
    ten_k = MEDIANS.get(((1, 10_000), "rust, 1 thread", "linearity"))
    million = MEDIANS.get(((1, 1_000_000), "rust, 1 thread", "linearity"))
    if ten_k and million:
        write(f"  linearity, rust forward+backward on 1 thread: time(N=1,000,000) / time(N=10,000) = "
              f"{million / ten_k:.1f} (linear: 100; fixed per-call costs pull it lower)")
