"""Property tests on random shapes: the fast backends agree with the dense inverse and keep their bounds."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from resnetbk import bk_core, dense_resolvent_diag

batch_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=3).map(tuple)


@given(
    batch=batch_shapes,
    n=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    mode=st.sampled_from(("causal", "bidirectional")),
    backend=st.sampled_from(("rust", "torch_sweep", "torch_scan")),
    symmetric=st.booleans(),
    z_imag=st.floats(0.05, 5.0),
)
def test_backend_matches_reference_on_random_shapes(batch, n, seed, mode, backend, symmetric, z_imag):
    gen = torch.Generator().manual_seed(seed)
    diag = 4 * torch.randn(batch + (n,), generator=gen, dtype=torch.float64)
    upper = torch.randn(batch + (n - 1,), generator=gen, dtype=torch.float64)
    lower = None if symmetric else torch.randn(batch + (n - 1,), generator=gen, dtype=torch.float64)
    z = complex(torch.randn((), generator=gen).item(), z_imag)
    got = bk_core(diag, upper, lower, z, mode=mode, backend=backend)
    assert got.shape == diag.shape and got.dtype == torch.complex128
    # The definition itself (a dense inverse), independent of every backend's recursion.
    want = dense_resolvent_diag(diag, upper, lower, torch.full(batch, z, dtype=torch.complex128), mode)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    if symmetric and got.numel():
        # Real symmetric H: every resolvent diagonal has |G| <= 1/Im z and Im G > 0.
        assert got.abs().max().item() <= (1 / z_imag) * (1 + 1e-12)
        assert (got.imag > 0).all()
