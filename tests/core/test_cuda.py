"""The CUDA path (the torch and Triton backends on CUDA tensors) against the CPU backends and the dense oracle.

Skipped where no GPU is present; run on a GPU machine with ``python -m pytest tests/test_cuda.py``.
"""

import pytest
import torch

from helpers import MODES, make_problem, relative_error, relative_rms
from resnetbk import bk_core, dense_resolvent_diag

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA_BACKENDS = ("torch", "torch_sweep", "torch_scan", "triton")


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", (1, 2, 3, 15, 63, 300))
@pytest.mark.parametrize("symmetric", (True, False))
def test_cuda_float64_matches_dense_inverse(backend, mode, n, symmetric):
    p = make_problem(batch=(2,), n=n, symmetric=symmetric, seed=n)
    want = dense_resolvent_diag(*p.inputs(), mode)
    q = make_problem(batch=(2,), n=n, symmetric=symmetric, seed=n, device="cuda")
    got = bk_core(*q.inputs(), mode=mode, backend=backend)
    assert got.device.type == "cuda"
    assert relative_error(got.cpu(), want) <= 1e-12


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", (1, 5, 64, 129, 1000))
def test_cuda_float32_against_cpu_float64(backend, mode, n):
    want = bk_core(*make_problem(batch=(4,), n=n, seed=3).inputs(), mode=mode, backend="rust")
    q = make_problem(batch=(4,), n=n, seed=3, dtype=torch.float32, device="cuda")
    got = bk_core(*q.inputs(), mode=mode, backend=backend)
    assert relative_rms(got.cpu(), want) <= 1e-5


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_cuda_gradients_match_rust(backend, mode, dtype):
    tol = 1e-11 if dtype == torch.float64 else 1e-4
    grads = {}
    for device, be in (("cpu", "rust"), ("cuda", backend)):
        p = make_problem(batch=(3,), n=77, dtype=dtype, seed=4, device=device)
        leaves = p.leaves()
        out = bk_core(*leaves, mode=mode, backend=be)
        w = torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=device).reshape(out.shape)
        (out.real * w + out.imag).sum().backward()
        grads[device] = [t.grad.cpu() for t in leaves]
    for name, a, b in zip(("diag", "upper", "lower", "z"), grads["cpu"], grads["cuda"]):
        assert relative_rms(b, a) <= tol, name


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_gradcheck(backend, mode):
    p = make_problem(batch=(2,), n=6, seed=1, device="cuda")
    fn = lambda d, u, lo, z: bk_core(d, u, lo, z, mode=mode, backend=backend)
    assert torch.autograd.gradcheck(fn, p.leaves(), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_causal_prefix_is_bit_identical(backend):
    n, k = 257, 100
    p = make_problem(batch=(3,), n=n, dtype=torch.float32, seed=2, device="cuda")
    base = bk_core(*p.inputs(), mode="causal", backend=backend)
    diag = p.diag.clone()
    diag[..., k + 1 :] += 1.0
    changed = bk_core(diag, p.upper, p.lower, p.z, mode="causal", backend=backend)
    assert torch.equal(changed[..., : k + 1], base[..., : k + 1])
    assert not torch.equal(changed[..., k + 1 :], base[..., k + 1 :])


@pytest.mark.parametrize("mode", MODES)
def test_cuda_million_sites_bounded(mode):
    n = 1_000_000
    diag = -2.0 + 3.0 * torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    diag = diag.cuda().requires_grad_()
    upper = torch.ones(1, n - 1, device="cuda")
    g = bk_core(diag, upper, None, 0.5j, mode=mode)
    assert torch.isfinite(g).all() and g.abs().max().item() <= 2.0 * (1 + 1e-5)
    g.real.sum().backward()
    assert torch.isfinite(diag.grad).all()


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_cuda_opcheck():
    p = make_problem(batch=(2,), n=6, device="cuda")
    torch.library.opcheck(torch.ops.resnetbk.bk_core.default, (*p.leaves(), "bidirectional", "torch"))


def test_rust_backend_rejects_cuda_tensors():
    p = make_problem(batch=(2,), n=6, device="cuda")
    with pytest.raises(ValueError, match="CPU tensors only"):
        bk_core(*p.inputs(), backend="rust")
