"""torch.autograd.gradcheck of the exact backward, float64, every input, both modes, fast backends."""

import pytest
import torch

from helpers import FAST_BACKENDS, MODES, make_problem
from resnetbk import bk_core


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("symmetric", (True, False))
@pytest.mark.parametrize("n", (1, 2, 7))
def test_gradcheck(backend, mode, symmetric, n):
    p = make_problem(batch=(2,), n=n, symmetric=symmetric, seed=n)
    leaves = p.leaves()
    fn = lambda d, u, lo, z: bk_core(d, u, lo, z, mode=mode, backend=backend)
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_gradcheck_one_input_at_a_time(backend):
    """Each input alone requiring grad (the others constant) still gets its exact gradient."""
    p = make_problem(batch=(2,), n=6, seed=4)
    for i in range(4):
        args = list(p.inputs())
        args[i] = args[i].detach().clone().requires_grad_()

        def fn(x, i=i, args=args):
            a = list(args)
            a[i] = x
            return bk_core(*a, mode="bidirectional", backend=backend)

        assert torch.autograd.gradcheck(fn, (args[i],), eps=1e-6, atol=1e-8, rtol=1e-6)
