"""The original benchmark's hybrid "gradient": reproduced on a hand-computed case, and measured, not trusted."""

import pytest
import torch

from helpers import make_problem
from resnetbk import bk_core


def test_hand_computed_single_site():
    # N = 1, a = -2, z = i: G = 1/(-2 - i) = -0.4 + 0.2i, G^2 = 0.12 - 0.16i, 1/G^2 = 3 + 4i.
    # Upstream gamma = 1 (loss = Re G): diagonal term -Re(G^2) = -0.12, inverse-square term
    # -Re(1/G^2) = -3; blend 0.5 gives -1.56. The exact gradient is Re(-G^2) = -0.12.
    diag = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    upper = torch.zeros(0, dtype=torch.float64)
    g = bk_core(diag, upper, None, 1j, grad="hybrid")
    torch.testing.assert_close(g, torch.tensor([-0.4 + 0.2j], dtype=torch.complex128))
    g.real.sum().backward()
    torch.testing.assert_close(diag.grad, torch.tensor([-1.56], dtype=torch.float64))

    exact = diag.detach().clone().requires_grad_()
    bk_core(exact, upper, None, 1j).real.sum().backward()
    torch.testing.assert_close(exact.grad, torch.tensor([-0.12], dtype=torch.float64))


def test_hand_computed_blend_and_imaginary_upstream():
    # loss = Im G: gamma = i. -Re(i G^2) = Im(G^2) = -0.16; -Re(i/G^2) = Im(1/G^2) = 4.
    diag = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    g = bk_core(diag, torch.zeros(0, dtype=torch.float64), None, 1j, grad="hybrid", hybrid_blend=0.25)
    g.imag.sum().backward()
    torch.testing.assert_close(diag.grad, torch.tensor([0.75 * -0.16 + 0.25 * 4.0], dtype=torch.float64))


def test_hybrid_clamps_at_1000():
    # |G^2| below the 1e-3 floor: the inverse-square term is ~1000 per unit of upstream gradient,
    # so an upstream gradient of 10 takes it to ~10,000, which the original benchmark clamps to 1000.
    diag = torch.tensor([300.0], dtype=torch.float64, requires_grad=True)
    g = bk_core(diag, torch.zeros(0, dtype=torch.float64), None, 1j, grad="hybrid", hybrid_blend=1.0)
    (10 * g.real).sum().backward()
    assert diag.grad.item() == -1000.0


@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
def test_hybrid_is_not_the_gradient(mode, capsys):
    """The hybrid direction is far from the exact gradient: cosine ~0.47 and a relative error ~10x here."""
    p = make_problem(batch=(8,), n=128, symmetric=True, z=1j, seed=0)
    weights = torch.randn(8, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grad_of(grad_mode):
        diag = p.diag.clone().requires_grad_()
        out = bk_core(diag, p.upper, None, 1j, mode=mode, grad=grad_mode)
        (out.real * weights + out.imag).sum().backward()
        return diag.grad.flatten()

    exact, hybrid = grad_of("exact"), grad_of("hybrid")
    cosine = torch.nn.functional.cosine_similarity(exact, hybrid, dim=0).item()
    with capsys.disabled():
        print(f"\n[hybrid vs exact gradient, {mode}] cosine = {cosine:+.3f}")
    assert 0.3 < cosine < 0.6, cosine  # measured +0.476 (causal) and +0.473 (bidirectional)
    assert (hybrid - exact).norm() > 5 * exact.norm()  # measured 11x and 13x


def test_hybrid_refuses_other_inputs():
    diag = torch.zeros(4)
    upper = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="upper.*grad='exact'"):
        bk_core(diag, upper, grad="hybrid")
