"""Bad input gets a clear error naming the argument and what was expected; NaN propagates exactly."""

import pytest
import torch

from resnetbk import bk_core, set_num_threads


def ok():
    return torch.zeros(2, 5), torch.ones(2, 4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(diag=torch.zeros(2, 5, dtype=torch.int64)), TypeError, r"diag: .*real float32 or float64.*int64"),
        (dict(diag=torch.zeros(2, 5, dtype=torch.complex64)), TypeError, r"diag: .*complex64"),
        (dict(diag=torch.zeros(2, 5, dtype=torch.bfloat16)), TypeError, r"diag: .*\.float\(\)"),
        (dict(diag=[0.0, 1.0]), TypeError, r"diag: expected a torch.Tensor, got list"),
        (dict(diag=torch.tensor(1.0)), ValueError, r"diag: expected at least one dimension"),
        (dict(diag=torch.zeros(2, 0), upper=torch.zeros(2, 0)), ValueError, r"diag: .*at least 1"),
        (dict(upper=torch.ones(2, 5)), ValueError, r"upper: expected last dimension N-1 = 4"),
        (dict(upper=torch.ones(2, 4, dtype=torch.float64)), TypeError, r"upper: expected dtype torch.float32"),
        (dict(upper=torch.ones(3, 4)), ValueError, r"upper: shape \(3, 4\) does not broadcast to \(2, 4\)"),
        (dict(lower=torch.ones(2, 3)), ValueError, r"lower: expected last dimension N-1 = 4"),
        (dict(lower=torch.ones(2, 4, dtype=torch.int32)), TypeError, r"lower: "),
        (dict(z=1.0), ValueError, r"z: expected Im z > 0"),
        (dict(z=-1j), ValueError, r"z: expected Im z > 0"),
        (dict(z=torch.tensor([1j, -1j])), ValueError, r"z: every value needs Im z > 0"),
        (dict(z=torch.tensor([1.0, 2.0])), ValueError, r"z: every value needs Im z > 0"),
        (dict(z=torch.tensor([complex("nan"), 1j])), ValueError, r"z: every value needs Im z > 0"),
        (dict(z=torch.tensor([1, 2])), TypeError, r"z: expected a complex"),
        (dict(z="1j"), TypeError, r"z: expected a complex number or tensor, got str"),
        (dict(z=torch.full((3,), 1j)), ValueError, r"z: shape \(3,\) does not broadcast to \(2,\)"),
        (dict(mode="forward"), ValueError, r"mode: expected one of \('causal', 'bidirectional'\)"),
        (dict(backend="cuda"), ValueError, r"backend: expected one of"),
        (dict(grad="approx"), ValueError, r"grad: expected one of"),
        (dict(backend="rust", grad="autograd"), ValueError, r"backend='rust' has no autograd graph"),
        (dict(hybrid_blend=0.3), ValueError, r"hybrid_blend: only meaningful with grad='hybrid'"),
    ],
)
def test_bad_input(kwargs, error, match):
    diag, upper = ok()
    args = dict(diag=diag, upper=upper, lower=None, z=1j)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        bk_core(**args)


def test_mismatched_devices():
    diag, upper = ok()
    with pytest.raises(ValueError, match=r"upper: expected a tensor on cpu like diag, got meta"):
        bk_core(diag, upper.to("meta"))
    with pytest.raises(ValueError, match=r"z: expected a tensor on cpu like diag, got meta"):
        bk_core(diag, upper, None, torch.full((2,), 1j, device="meta"))


def test_rust_backend_refuses_non_cpu_tensors():
    diag, upper = ok()
    with pytest.raises(ValueError, match=r"backend='rust' runs on CPU tensors only"):
        bk_core(diag.to("meta"), upper.to("meta"), None, 1j, backend="rust")


@pytest.mark.parametrize("value", (0, -1, 1.5, True))
def test_bad_thread_count(value):
    with pytest.raises(ValueError, match="threads: expected a positive int or None"):
        set_num_threads(value)


@pytest.mark.parametrize("backend", ("rust", "torch_sweep", "torch_scan"))
@pytest.mark.parametrize("which", ("diag", "upper", "lower"))
def test_nan_propagates_to_exactly_the_dependent_outputs(backend, which):
    n, j = 12, 5
    diag, upper, lower = torch.randn(2, n) - 2, torch.ones(2, n - 1), torch.ones(2, n - 1)
    {"diag": diag, "upper": upper, "lower": lower}[which][0, j] = float("nan")
    causal = bk_core(diag, upper, lower, mode="causal", backend=backend)
    # diag j first enters g_j; off-diagonal j (coupling j, j+1) first enters g_{j+1}.
    first = j if which == "diag" else j + 1
    assert not torch.isnan(causal[0, :first]).any()
    assert torch.isnan(causal[0, first:]).all()
    assert not torch.isnan(causal[1]).any()
    bidirectional = bk_core(diag, upper, lower, mode="bidirectional", backend=backend)
    assert torch.isnan(bidirectional[0]).all()  # every G_kk depends on every entry of H
    assert not torch.isnan(bidirectional[1]).any()


def test_autograd_with_auto_backend_uses_torch_on_cpu():
    diag = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    out = bk_core(diag, torch.ones(2, 6, dtype=torch.float64), grad="autograd")  # backend="auto"
    out.real.sum().backward()
    assert diag.grad is not None and out.grad_fn is not None
    assert "resnetbk" not in type(out.grad_fn).__name__.lower()
