"""Forward and forward+backward timings of every BK-Core implementation (pytest-benchmark).

    scripts/dev bench                       # CPU, one thread
    RESNETBK_BENCH_THREADS=2 scripts/dev bench
    RESNETBK_BENCH_DEVICE=cuda python -m pytest benches --benchmark-only

Implementations: the Rust backend through ``bk_core`` (custom op, autograd, and the loss's own
``.real.sum()`` backward included), the Rust kernels alone (``resnetbk._native`` on preallocated
arrays: the difference is the per-call overhead), the torch backend (its own choice, and the
sweep and the parallel scan forced), grad="autograd" through the torch implementation, and the
original-style Python loop with autograd or with the original benchmark's hybrid backward.
On CUDA also the Triton kernels (``backend="triton"``) and, as the yardstick the GPU target is
set against, one causal attention layer of the same width (``attention_layer``: d_model = B
channels over N positions, one sequence, one head, QKV and output projections, torch's fused
scaled_dot_product_attention).

RESNETBK_BENCH_MODE=bidirectional times the bidirectional mode (default: causal).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import resnetbk
from conftest import DEVICE, MEDIANS, record
from resnetbk import _native, bk_core
from seed_style import SeedStyleHybrid, seed_style_forward

CASES = [(32, 128), (32, 2048), (4, 65_536), (1, 10_000), (1, 1_000_000)]
IMPLS = {
    "rust": dict(backend="rust", grad="exact"),
    "torch": dict(backend="torch", grad="exact"),
    "torch_sweep": dict(backend="torch_sweep", grad="exact"),
    "torch_scan": dict(backend="torch_scan", grad="exact"),
    "autograd": dict(backend="torch", grad="autograd"),
    "triton": dict(backend="triton", grad="exact"),
}
MODE = os.environ.get("RESNETBK_BENCH_MODE", "causal")
# Python loops over N take minutes at these lengths; the speed-ups are measured below them.
MAX_LOOP_LENGTH = int(os.environ.get("RESNETBK_BENCH_MAX_LOOP_LENGTH", "65536"))
MAX_LOOP_ELEMENTS = 300_000


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _inputs(b, n, requires_grad):
    gen = torch.Generator().manual_seed(0)
    v = (0.5 * torch.randn(b, n, generator=gen)).to(DEVICE).requires_grad_(requires_grad)
    upper = torch.ones(b, n - 1, device=DEVICE)
    return v, upper


def _step(fn, v, backward):
    def run():
        out = fn(v)
        if backward:
            out.real.sum().backward()
            v.grad = None
        _sync()

    return run


def _attention_layer(width):
    """One causal attention layer of ``width`` channels: ``(1, N, width) -> (1, N, width)``."""
    qkv = torch.nn.Linear(width, 3 * width, device=DEVICE)
    proj = torch.nn.Linear(width, width, device=DEVICE)

    def layer(x):
        q, k, v = qkv(x).unsqueeze(1).chunk(3, dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.complex(proj(y.squeeze(1)), torch.zeros((), device=DEVICE))  # complex: the shared step takes .real

    return layer


def _kernels_only(b, n, backward):
    """The Rust forward (and backward) kernels on preallocated numpy arrays: no torch at all."""
    threads = resnetbk.get_num_threads()
    a = (0.5 * np.random.default_rng(0).standard_normal((b, n)) - 2.0).astype(np.float32)
    upper = np.ones((b, n - 1), np.float32)
    z = np.full(b, 1j, np.complex64)
    out, grad_out = np.empty((b, n), np.complex64), np.ones((b, n), np.complex64)
    grad_a, grad_upper, grad_z = np.empty_like(a), np.empty_like(upper), np.empty_like(z)

    def run():
        _native.bk_forward_f32(a, upper, None, z, out, MODE, threads)
        if backward:
            _native.bk_backward_f32(a, upper, None, z, grad_out, grad_a, grad_upper, None, grad_z, MODE, threads)

    return run


def _run(benchmark, run):
    run()  # warm-up (and first-call allocations)
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    rounds = int(min(200, max(3, 1.0 / max(once, 1e-6))))
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


def _skip_reason(impl, b, n):
    if impl.startswith("seed") and MODE != "causal":
        return "the original-style loop is written for the causal mode"
    if impl.startswith("rust") and DEVICE != "cpu":
        return "the Rust backend is CPU only"
    if impl in ("triton", "attention_layer") and DEVICE != "cuda":
        return f"{impl} is measured on CUDA (the Triton kernels run on CPU only in Triton's slow interpreter)"
    loop = impl in ("torch_sweep", "seed_autograd", "seed_hybrid") or (impl in ("torch", "autograd") and n < 64)
    if loop and (n > MAX_LOOP_LENGTH or b * n > MAX_LOOP_ELEMENTS):
        return f"a Python loop over N = {n:,} takes minutes; this implementation is measured at smaller N"
    if impl == "autograd" and b * n > 300_000:
        return "autograd through the scan keeps O(N log N) intermediates; measured at smaller sizes"
    return None


@pytest.mark.parametrize("phase", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", list(IMPLS) + ["rust_kernels", "seed_autograd", "seed_hybrid", "attention_layer"])
@pytest.mark.parametrize("case", CASES, ids=[f"{b}x{n}" for b, n in CASES])
def test_bk_core_speed(benchmark, case, impl, phase):
    b, n = case
    if impl == "seed_hybrid" and phase == "forward":
        pytest.skip("same forward as seed_autograd")
    reason = _skip_reason(impl, b, n)
    if reason:
        pytest.skip(reason)
    backward = phase == "forward+backward"
    benchmark.group = f"{b}x{n} {phase}"
    benchmark.extra_info.update(elements=b * n, device=DEVICE, mode=MODE)
    if impl == "rust_kernels":
        _run(benchmark, _kernels_only(b, n, backward))
        record(case, impl, phase, benchmark)
        return
    v, upper = _inputs(b, n, backward)
    if impl == "attention_layer":
        _run(benchmark, _step(_attention_layer(b), v.t().unsqueeze(0), backward))
        record(case, impl, phase, benchmark)
        return
    if impl == "seed_autograd":
        fn = seed_style_forward
    elif impl == "seed_hybrid":
        fn = SeedStyleHybrid.apply
    else:
        options = IMPLS[impl]
        fn = lambda v: bk_core(v - 2.0, upper, None, 1j, mode=MODE, **options)
    _run(benchmark, _step(fn, v, backward))
    record(case, impl, phase, benchmark)


def test_linear_in_length(benchmark):
    """time(N = 1,000,000) / time(N = 10,000) for the Rust forward+backward, one thread.

    Linear scaling gives 100; the fixed per-call overhead (custom-op dispatch, allocation)
    weighs more at N = 10,000 and pulls the ratio below 100. Anything superlinear shows above it.
    """
    if DEVICE != "cpu":
        pytest.skip("the Rust backend is CPU only")
    resnetbk.set_num_threads(1)
    try:
        times = {}
        for n in (10_000, 1_000_000):
            v, upper = _inputs(1, n, True)
            run = _step(lambda v, upper=upper: bk_core(v - 2.0, upper, backend="rust"), v, True)
            run()
            samples = []
            for _ in range(max(5, int(2e6 / n))):
                start = time.perf_counter()
                run()
                samples.append(time.perf_counter() - start)
            times[n] = sorted(samples)[len(samples) // 2]
    finally:
        resnetbk.set_num_threads(None)
    ratio = times[1_000_000] / times[10_000]
    benchmark.extra_info.update(ratio=ratio, seconds=times)
    benchmark.pedantic(lambda: None, rounds=1)
    MEDIANS[((1, 10_000), "rust, 1 thread", "linearity")] = times[10_000]
    MEDIANS[((1, 1_000_000), "rust, 1 thread", "linearity")] = times[1_000_000]
    assert ratio <= 150, f"time grew {ratio:.1f}x for a 100x longer row: worse than linear"


MASK_CASES = [(32, 128), (32, 2048)]


@pytest.mark.parametrize("mask", ["none", "half"])
@pytest.mark.parametrize("backend", ["rust", "torch"])
@pytest.mark.parametrize("case", MASK_CASES, ids=[f"{b}x{n}" for b, n in MASK_CASES])
def test_masked_read_out_speed(benchmark, case, backend, mask):
    """Sparse BK-Core: forward+backward with a 50% read-out mask against none (same run)."""
    if backend == "rust" and DEVICE != "cpu":
        pytest.skip("the Rust backend is CPU only")
    b, n = case
    v, upper = _inputs(b, n, True)
    keep = None if mask == "none" else torch.rand(b, n, generator=torch.Generator().manual_seed(1)).to(DEVICE) < 0.5
    benchmark.group = f"{b}x{n} masked read-out, {MODE}"
    benchmark.extra_info.update(elements=b * n, device=DEVICE, mode=MODE)
    _run(benchmark, _step(lambda v: bk_core(v - 2.0, upper, mode=MODE, backend=backend, mask=keep), v, True))
    record(case, f"{backend}, mask {mask}", "forward+backward", benchmark)
