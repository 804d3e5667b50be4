"""Every backend against every other: forward and every gradient, odd lengths, float32 and float64."""

import itertools

import pytest
import torch

from helpers import FAST_BACKENDS, MODES, make_problem, relative_rms
from resnetbk import bk_core

ALL_VARIANTS = [(b, "exact") for b in FAST_BACKENDS] + [("torch_sweep", "autograd"), ("torch_scan", "autograd")]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _forward_and_grads(problem, mode, backend, grad):
    leaves = problem.leaves()
    out = bk_core(*leaves, mode=mode, backend=backend, grad=grad)
    weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
    (out.real * weights + out.imag * weights.flip(-1)).sum().backward()
    return out.detach(), [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", (1, 2, 5, 31, 65, 129))
@pytest.mark.parametrize("symmetric", (True, False))
def test_all_backends_agree(dtype, mode, n, symmetric):
    problem = make_problem(batch=(3, 2), n=n, dtype=dtype, symmetric=symmetric, seed=n)
    results = {v: _forward_and_grads(problem, mode, *v) for v in ALL_VARIANTS}
    tol = TOLERANCE[dtype]
    for (va, (out_a, grads_a)), (vb, (out_b, grads_b)) in itertools.combinations(results.items(), 2):
        assert relative_rms(out_a, out_b) <= tol, (va, vb, "forward")
        for name, ga, gb in zip(("diag", "upper", "lower", "z"), grads_a, grads_b):
            # autograd leaves an unused input's grad at None (an N = 1 row never reads upper).
            if ga is None or gb is None:
                assert all(g is None or g.numel() == 0 for g in (ga, gb)), (va, vb, name)
                continue
            assert ga.dtype == gb.dtype and ga.shape == gb.shape, (va, vb, name)
            # A near-zero gradient (e.g. dz of a 1-site row) is compared absolutely.
            scale = max(gb.norm().item(), 1e-6)
            assert (ga - gb).norm().item() / scale <= 10 * tol, (va, vb, name)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_broadcast_and_non_contiguous_inputs(backend):
    """Shared off-diagonals, a per-row z, a transposed diag: results equal the explicit version."""
    gen = torch.Generator().manual_seed(3)
    diag_t = torch.randn(17, 4, dtype=torch.float64, generator=gen).requires_grad_()  # (N, B)
    diag = diag_t.t()  # non-contiguous (B, N)
    upper = torch.ones(16, dtype=torch.float64, requires_grad=True)  # broadcast over rows
    z = torch.tensor([1j, 0.5 + 1j, 2j, -1 + 0.3j], dtype=torch.complex128, requires_grad=True)
    out = bk_core(diag, upper, None, z, mode="bidirectional", backend=backend)
    out.abs().sum().backward()

    diag2 = diag.detach().clone().requires_grad_()
    upper2 = upper.detach().expand(4, 16).clone().requires_grad_()
    z2 = z.detach().clone().requires_grad_()
    out2 = bk_core(diag2, upper2, None, z2, mode="bidirectional", backend=backend)
    out2.abs().sum().backward()
    torch.testing.assert_close(out, out2, rtol=0, atol=0)
    torch.testing.assert_close(diag_t.grad.t(), diag2.grad, rtol=0, atol=0)
    torch.testing.assert_close(upper.grad, upper2.grad.sum(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(z.grad, z2.grad, rtol=0, atol=0)


def test_scalar_z_and_batchless_input():
    diag = torch.full((5,), -2.0, dtype=torch.float64)
    upper = torch.ones(4, dtype=torch.float64)
    a = bk_core(diag, upper)  # z defaults to 1j, mode to causal
    b = bk_core(diag, upper, None, torch.tensor(1j, dtype=torch.complex128))
    assert a.shape == (5,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_batch(backend):
    diag = torch.zeros(0, 6, requires_grad=True)
    out = bk_core(diag, torch.ones(0, 5), backend=backend)
    assert out.shape == (0, 6) and out.dtype == torch.complex64
    out.real.sum().backward()
    assert diag.grad.shape == (0, 6)
