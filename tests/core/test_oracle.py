"""Every backend against the float64 dense inverse (the definition of the BK-Core)."""

import pytest
import torch

from helpers import FAST_BACKENDS, MODES, make_problem, oracle_case, relative_error, relative_rms
from resnetbk import bk_core, dense_resolvent_diag

LENGTHS = (1, 2, 3, 15, 63, 300)
SEEDS = (0, 1, 2)


def _cases():
    for n in LENGTHS:
        for mode in MODES:
            for symmetric in (True, False):
                for z in ("random", 1j):
                    yield n, mode, symmetric, z


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("n,mode,symmetric,z", list(_cases()))
def test_float64_matches_dense_inverse(backend, n, mode, symmetric, z):
    # The causal oracle inverts all N leading blocks; fewer seeds keep N = 300 quick.
    for seed in SEEDS if n < 300 else SEEDS[:1]:
        p, want = oracle_case((2,), n, symmetric, z, seed, mode)
        got = bk_core(*p.inputs(), mode=mode, backend=backend)
        assert got.dtype == torch.complex128 and got.shape == p.diag.shape
        assert relative_error(got, want) <= 1e-12


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", LENGTHS)
def test_float32_relative_rms_against_float64(backend, mode, n):
    for seed in SEEDS:
        p64 = make_problem(batch=(4,), n=n, seed=seed)
        p32 = make_problem(batch=(4,), n=n, seed=seed, dtype=torch.float32)
        want = bk_core(*p64.inputs(), mode=mode, backend="rust")
        got = bk_core(*p32.inputs(), mode=mode, backend=backend)
        assert got.dtype == torch.complex64
        assert relative_rms(got, want) <= 1e-5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("symmetric", (True, False))
def test_exact_gradients_match_dense_inverse_autograd(backend, mode, symmetric):
    """The analytic VJP equals autograd through torch.linalg.inv, for every input."""
    p = make_problem(batch=(2,), n=9, symmetric=symmetric, seed=5)
    weights = torch.randn(2, 9, dtype=torch.complex128, generator=torch.Generator().manual_seed(9))

    def loss(fn, leaves):
        g = fn(*leaves)
        return (g * weights.conj()).real.sum() + (g.abs() ** 2).sum()

    ours = p.leaves()
    loss(lambda *x: bk_core(*x, mode=mode, backend=backend), ours).backward()
    oracle = p.leaves()
    loss(lambda *x: dense_resolvent_diag(*x, mode), oracle).backward()
    for name, got, want in zip(("diag", "upper", "lower", "z"), ours, oracle):
        if want is None:
            continue
        assert got.grad is not None, name
        assert relative_rms(got.grad, want.grad) <= 1e-12, name
