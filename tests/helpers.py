"""Shared helpers for the tests: BK-Core problem generators, error measures, the cached dense oracle."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch

import resnetbk

FAST_BACKENDS = ("rust", "torch_sweep", "torch_scan")
MODES = ("causal", "bidirectional")


@dataclass
class Problem:
    diag: torch.Tensor
    upper: torch.Tensor
    lower: Optional[torch.Tensor]
    z: torch.Tensor

    def inputs(self):
        return self.diag, self.upper, self.lower, self.z

    def leaves(self):
        """Fresh leaf copies that require grad (lower only when present)."""
        leaf = lambda t: None if t is None else t.detach().clone().requires_grad_()
        return tuple(leaf(t) for t in self.inputs())


def make_problem(
    batch: tuple = (3,),
    n: int = 15,
    dtype: torch.dtype = torch.float64,
    symmetric: bool = False,
    z: str | complex = "random",
    seed: int = 0,
    device: str = "cpu",
) -> Problem:
    """Random H = potential around the Laplacian's -2 diagonal, couplings near 1."""
    gen = torch.Generator().manual_seed(seed)
    diag = -2.0 + torch.randn(batch + (n,), generator=gen, dtype=torch.float64)
    upper = 1.0 + 0.3 * torch.randn(batch + (n - 1,), generator=gen, dtype=torch.float64)
    lower = None if symmetric else 1.0 + 0.3 * torch.randn(batch + (n - 1,), generator=gen, dtype=torch.float64)
    if z == "random":
        zr = torch.randn(batch, generator=gen, dtype=torch.float64)
        zi = 0.2 + 1.8 * torch.rand(batch, generator=gen, dtype=torch.float64)
        zt = torch.complex(zr, zi)
    else:
        zt = torch.full(batch, complex(z), dtype=torch.complex128)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return Problem(cast(diag), cast(upper), cast(lower), zt.to(device=device, dtype=complex_dtype))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest elementwise |got - want| / |want|."""
    want = want.to(torch.complex128) if want.is_complex() else want.double()
    return ((got.to(want.dtype) - want).abs() / want.abs()).max().item()


def relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want||_2 / ||want||_2 (the float32 criterion)."""
    want = want.to(torch.complex128) if want.is_complex() else want.double()
    return ((got.to(want.dtype) - want).norm() / want.norm()).item()




@functools.cache
def oracle_case(batch: tuple, n: int, symmetric: bool, z, seed: int, mode: str) -> tuple:
    """``(problem, dense_resolvent_diag of it)`` in float64, cached: every backend is held to the
    same oracle, and the causal one (N dense inverses) is the slow part of the suite."""
    p = make_problem(batch=batch, n=n, symmetric=symmetric, z=z, seed=seed)
    return p, resnetbk.dense_resolvent_diag(*p.inputs(), mode)


def make_config(**fields):
    """A ``BenchmarkConfig`` from flat keyword fields (``d_model=16, use_act=True, epochs=2``),
    each put in its place (``model``, ``methods``) by ``resnetbk.bench.config.nest``."""
    from resnetbk.bench.config import BenchmarkConfig, nest

    return BenchmarkConfig.from_dict(nest(fields))
