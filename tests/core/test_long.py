"""Long rows: the ratio form neither overflows nor decays into garbage at N = 1,000,000."""

import pytest
import torch

from resnetbk import bk_core

N = 1_000_000


@pytest.mark.parametrize("backend", ("rust", "torch_scan"))
@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
def test_million_sites_float32_bounded(backend, mode):
    gen = torch.Generator().manual_seed(0)
    diag = -2.0 + 3.0 * torch.randn(1, N, generator=gen)
    upper = torch.ones(1, N - 1)
    z = 0.5j
    g = bk_core(diag, upper, None, z, mode=mode, backend=backend)
    assert torch.isfinite(g).all()
    # Real symmetric H: every ratio is bounded by 1/Im z.
    assert g.abs().max().item() <= (1 / 0.5) * (1 + 1e-5)
    # And it is not trivially zero: the imaginary part of a resolvent diagonal is positive.
    assert (g.imag > 0).all()


def test_million_sites_float32_agrees_with_float64():
    gen = torch.Generator().manual_seed(1)
    diag = -2.0 + torch.randn(1, N, generator=gen, dtype=torch.float64)
    upper = torch.ones(1, N - 1, dtype=torch.float64)
    g64 = bk_core(diag, upper, mode="bidirectional", backend="rust")
    g32 = bk_core(diag.float(), upper.float(), mode="bidirectional", backend="rust")
    err = ((g32.to(torch.complex128) - g64).norm() / g64.norm()).item()
    assert err <= 1e-5


@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
def test_million_sites_backward_finite(mode):
    diag = (-2.0 + torch.randn(1, N, generator=torch.Generator().manual_seed(2))).requires_grad_()
    upper = torch.ones(1, N - 1, requires_grad=True)
    g = bk_core(diag, upper, mode=mode, backend="rust")
    g.real.sum().backward()
    assert torch.isfinite(diag.grad).all() and torch.isfinite(upper.grad).all()
