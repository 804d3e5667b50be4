"""Causal mode never reads the future (bit-identical prefixes); bidirectional mode does (the leak)."""

import pytest
import torch

from helpers import FAST_BACKENDS, make_problem
from resnetbk import bk_core

ALL = [(b, "exact") for b in FAST_BACKENDS] + [("torch", "autograd")]


def _perturb_after(problem, k, which, seed):
    gen = torch.Generator().manual_seed(seed)
    diag, upper, lower, z = (t.clone() if t is not None else None for t in problem.inputs())
    target = {"diag": diag, "upper": upper, "lower": lower}[which]
    # Off-diagonal index j couples sites j and j+1: it is "future" for site k when j >= k.
    start = k + 1 if which == "diag" else k
    target[..., start:] += torch.randn(target[..., start:].shape, generator=gen, dtype=target.dtype)
    return diag, upper, lower, z


@pytest.mark.parametrize("backend,grad", ALL)
@pytest.mark.parametrize("which", ("diag", "upper", "lower"))
@pytest.mark.parametrize("n", (2, 17, 100))
def test_causal_prefix_is_bit_identical(backend, grad, which, n):
    p = make_problem(batch=(3,), n=n, dtype=torch.float32, seed=n)
    base = bk_core(*p.inputs(), mode="causal", backend=backend, grad=grad)
    for k in sorted({0, n // 3, n // 2, n - 2} - {n - 1}):
        changed = bk_core(*_perturb_after(p, k, which, seed=k), mode="causal", backend=backend, grad=grad)
        assert torch.equal(changed[..., : k + 1], base[..., : k + 1]), f"position <= {k} moved"
        assert not torch.equal(changed[..., k + 1 :], base[..., k + 1 :]), "the perturbation did nothing"


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_causal_gradient_does_not_flow_backwards_in_time(backend):
    """d g_k / d a_j = 0 for j > k: a loss on the prefix gives the suffix zero gradient."""
    p = make_problem(batch=(2,), n=20, seed=1)
    diag, upper, lower, z = p.leaves()
    g = bk_core(diag, upper, lower, z, mode="causal", backend=backend)
    g[..., :8].abs().sum().backward()
    assert torch.count_nonzero(diag.grad[..., 8:]) == 0
    assert torch.count_nonzero(upper.grad[..., 7:]) == 0
    assert torch.count_nonzero(diag.grad[..., :8]) > 0


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bidirectional_reads_the_future(backend):
    """Documents the leak: in bidirectional mode, changing the future changes the past."""
    p = make_problem(batch=(3,), n=40, seed=2)
    base = bk_core(*p.inputs(), mode="bidirectional", backend=backend)
    changed = bk_core(*_perturb_after(p, 20, "diag", seed=0), mode="bidirectional", backend=backend)
    assert not torch.equal(changed[..., :21], base[..., :21])
    assert (changed[..., 20] - base[..., 20]).abs().max() > 1e-6
