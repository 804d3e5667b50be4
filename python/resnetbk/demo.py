"""A small BK-Core demo: agreement with a dense inverse, and a measured speed.

    python -m resnetbk.demo [--batch 32] [--length 2048] [--repeats 20]

Every figure it prints is measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import bk_core, dense_resolvent_diag, get_num_threads
from .core.reference import resolvent_diag_sweep


def _agreement(n: int) -> None:
    gen = torch.Generator().manual_seed(0)
    diag = -2.0 + torch.randn(4, n, generator=gen, dtype=torch.float64)
    upper = torch.ones(4, n - 1, dtype=torch.float64)
    print(f"Agreement with a float64 dense inverse (torch.linalg.inv), H = Laplacian + random potential, N = {n}:")
    for mode in ("causal", "bidirectional"):
        oracle = dense_resolvent_diag(diag, upper, None, 1j, mode)
        for backend in ("rust", "torch"):
            for dtype in (torch.float64, torch.float32):
                got = bk_core(diag.to(dtype), upper.to(dtype), mode=mode, backend=backend)
                rel = ((got.to(torch.complex128) - oracle).norm() / oracle.norm()).item()
                print(f"  {mode:13s} {backend:5s} {str(dtype).removeprefix('torch.'):7s}  relative error {rel:.1e}")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _speed(batch: int, n: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(1)
    diag = (-2.0 + torch.randn(batch, n, generator=gen)).requires_grad_()
    upper = torch.ones(batch, n - 1)
    threads = get_num_threads()
    elements = batch * n
    print(f"\nSpeed, float32, B x N = {batch} x {n}, causal, forward + exact backward ({threads} thread(s), best of {repeats}):")

    def rust_step():
        bk_core(diag, upper, backend="rust").real.sum().backward()

    def seed_style_step():
        # The original benchmark's approach: a Python loop over positions, differentiated by autograd.
        z = torch.full((batch,), 1j, dtype=torch.complex64)
        resolvent_diag_sweep(diag, upper * upper, z, "causal").real.sum().backward()

    rust = _time(rust_step, repeats)
    print(f"  rust backend         {rust * 1e3:9.3f} ms  {elements / rust / 1e6 / threads:9.1f} M elements/s per thread")
    slow = _time(seed_style_step, max(1, repeats // 10))
    print(f"  python loop+autograd {slow * 1e3:9.3f} ms  {elements / slow / 1e6 / threads:9.1f} M elements/s per thread")
    print(f"  speed-up: {slow / rust:.0f}x (see benches/ for the full comparison)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="rows B (default 32)")
    parser.add_argument("--length", type=int, default=2048, help="sequence length N (default 2048)")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions (default 20)")
    parser.add_argument("--oracle-length", type=int, default=300, help="N for the dense comparison (default 300)")
    args = parser.parse_args(argv)
    for name in ("batch", "length", "repeats", "oracle_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    _agreement(args.oracle_length)
    _speed(args.batch, args.length, args.repeats)


if __name__ == "__main__":
    main()
