"""The BK-Core's read-out mask: every backend equals the unmasked op times the mask, forward and
every gradient, on odd sizes, in both modes; the recursion still sees masked positions."""

import pytest
import torch

from helpers import FAST_BACKENDS, MODES, make_problem
from resnetbk import bk_core


def _mask(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,symmetric", [(1, True), (2, False), (17, True), (33, False)])
def test_masked_equals_unmasked_times_mask_forward_and_gradients(backend, mode, n, symmetric):
    p = make_problem(batch=(3,), n=n, symmetric=symmetric)
    mask = _mask(p.diag.shape)
    weights = torch.randn(p.diag.shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(5))

    def run(masked):
        leaves = p.leaves()
        if masked:
            out = bk_core(*leaves, mode=mode, backend=backend, mask=mask)
        else:  # the slow reference: autograd through the torch sweep, masked by hand afterwards
            out = bk_core(*leaves, mode=mode, backend="torch_sweep", grad="autograd").masked_fill(~mask, 0)
        (out * weights).real.sum().backward()
        return out, [t.grad for t in leaves if t is not None]

    got, got_grads = run(True)
    want, want_grads = run(False)
    assert bool((got[~mask] == 0).all())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        if w is None:  # N = 1: the empty off-diagonal gets no gradient from autograd
            assert g is None or g.numel() == 0
        else:
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_a_masked_position_still_shapes_later_outputs(backend):
    p = make_problem(batch=(2,), n=12, symmetric=True)
    mask = torch.ones(p.diag.shape, dtype=torch.bool)
    mask[:, 4] = False
    base = bk_core(*p.inputs(), backend=backend, mask=mask)
    diag = p.diag.clone()
    diag[:, 4] += 1.0
    moved = bk_core(diag, p.upper, p.lower, p.z, backend=backend, mask=mask)
    assert torch.equal(base[:, :4], moved[:, :4])  # causal: earlier outputs do not move
    assert not torch.allclose(base[:, 5:], moved[:, 5:])  # the recursion passed through position 4


def test_mask_errors_name_the_argument():
    p = make_problem(batch=(2,), n=6)
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        bk_core(*p.inputs(), mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="mask: shape \\(2, 5\\) does not broadcast"):
        bk_core(*p.inputs(), mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: not supported with grad='hybrid'"):
        bk_core(*p.inputs(), grad="hybrid", mask=torch.ones(2, 6, dtype=torch.bool))


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("backend", ("rust", "torch"))
@pytest.mark.parametrize("mode", MODES)
def test_opcheck_with_a_mask(backend, mode):
    p = make_problem(batch=(2,), n=6)
    mask = _mask((2, 6), seed=1)
    torch.library.opcheck(torch.ops.resnetbk.bk_core.default, (*p.leaves(), mode, backend, mask))


def test_autograd_applies_the_mask_too():
    p = make_problem(batch=(2,), n=9)
    mask = _mask((2, 9), seed=2)
    got = bk_core(*p.inputs(), grad="autograd", mask=mask)
    torch.testing.assert_close(got, bk_core(*p.inputs(), grad="autograd").masked_fill(~mask, 0), rtol=0, atol=0)
