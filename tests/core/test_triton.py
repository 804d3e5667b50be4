"""The ``"triton"`` backend against the Rust backend, the torch references and the dense oracle.

On a machine with a CUDA GPU the kernels run compiled on it; without one they run on CPU
tensors in Triton's interpreter (TRITON_INTERPRET=1, set here before the kernels are first
imported), which executes the same kernel code slowly: sizes stay small. The chunked scan is
forced (``CHUNK_MIN_LENGTH = 0``) wherever a row is long enough to split, so that both the
one-pass kernels and the three-launch scan (ragged last chunk included) are held to the others.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import MODES, make_problem, relative_error, relative_rms
from resnetbk import bk_core, dense_resolvent_diag
from resnetbk.core import backends, torch_backend
from resnetbk.core.reference import left_ratios_sweep
from resnetbk.core.scan import linear_recurrence_sweep

pytestmark = pytest.mark.skipif(not backends.triton_available(), reason="needs the triton package")

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(scope="module")
def kernels():
    """The kernel module, compiled on a GPU or (re)imported under Triton's CPU interpreter.

    The environment variable is restored afterwards (the module keeps its interpreted kernels).
    """
    previous = os.environ.get("TRITON_INTERPRET")
    if not ON_GPU:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        from resnetbk.core import triton_kernels

        if not ON_GPU and not triton_kernels.INTERPRETED:
            triton_kernels = importlib.reload(triton_kernels)
        assert backends.triton_interpreted() == (not ON_GPU)
        yield triton_kernels
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture(params=("one_pass", "chunked"))
def chunking(request, kernels, monkeypatch):
    if request.param == "chunked":
        monkeypatch.setattr(kernels, "CHUNK_MIN_LENGTH", 0)
    return request.param


def _forward_and_grads(problem, mode, backend, device):
    leaves = [None if t is None else t.detach().to(device).requires_grad_() for t in problem.inputs()]
    out = bk_core(*leaves, mode=mode, backend=backend)
    weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64, device=device).reshape(out.shape)
    (out.real * weights + out.imag * weights.flip(-1)).sum().backward()
    return out.detach().cpu(), [None if t is None else t.grad.cpu() for t in leaves]


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("shape", ((3, 1), (2, 2), (2, 3, 37), (2, 100)))
@pytest.mark.parametrize("chunk", (None, 1, 4, 16, 1000))
def test_primitives_match_the_sweeps(kernels, dtype, shape, chunk):
    """Both primitives against their one-position-at-a-time references, for every chunk length."""
    gen = torch.Generator().manual_seed(shape[-1])
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    n = shape[-1]
    s = (torch.randn(shape, dtype=dtype, generator=gen) - 1j * (0.2 + torch.rand(shape, dtype=dtype, generator=gen)))
    s = s.to(complex_dtype)
    kap = torch.rand(shape[:-1] + (n - 1,), dtype=dtype, generator=gen)
    e = torch.randn(shape, dtype=complex_dtype, generator=gen)
    m = 0.9 * torch.randn(shape, dtype=complex_dtype, generator=gen)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    got = kernels.left_ratios(s.to(DEVICE), kap.to(DEVICE), chunk).cpu()
    assert relative_rms(got, left_ratios_sweep(s, kap)) <= tol
    got = kernels.linear_recurrence(e.to(DEVICE), m.to(DEVICE), chunk).cpu()
    assert relative_rms(got, linear_recurrence_sweep(e, m)) <= tol


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,symmetric", ((1, False), (2, True), (5, False), (65, True), (65, False)))
def test_forward_and_every_gradient_match_rust(chunking, dtype, mode, n, symmetric):
    problem = make_problem(batch=(3, 2), n=n, dtype=dtype, symmetric=symmetric, seed=n)
    out_r, grads_r = _forward_and_grads(problem, mode, "rust", "cpu")
    out_t, grads_t = _forward_and_grads(problem, mode, "triton", DEVICE)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert relative_rms(out_t, out_r) <= tol
    for name, gt, gr in zip(("diag", "upper", "lower", "z"), grads_t, grads_r):
        if gr is None:
            assert gt is None, name
            continue
        assert gt.dtype == gr.dtype and gt.shape == gr.shape, name
        scale = max(gr.norm().item(), 1e-6)
        assert (gt - gr).norm().item() / scale <= 10 * tol, name


@pytest.mark.parametrize("mode", MODES)
def test_float64_matches_the_dense_inverse(chunking, mode):
    p = make_problem(batch=(2,), n=40, seed=5)
    want = dense_resolvent_diag(*p.inputs(), mode)
    got = bk_core(*(None if t is None else t.to(DEVICE) for t in p.inputs()), mode=mode, backend="triton")
    assert relative_error(got.cpu(), want) <= 1e-12


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(chunking, kernels, monkeypatch, mode):
    if chunking == "chunked":
        monkeypatch.setattr(kernels, "chunk_length", lambda rows, n: 2)  # 5 sites: chunks of 2, 2, 1
    p = make_problem(batch=(1,), n=5, seed=2, device=DEVICE)
    fn = lambda d, u, lo, z: bk_core(d, u, lo, z, mode=mode, backend="triton")
    assert torch.autograd.gradcheck(fn, p.leaves(), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_causal_prefix_is_bit_identical_across_chunks(chunking):
    """Changing sites after k (in k's own chunk and later ones) leaves outputs <= k bit-identical."""
    p = make_problem(batch=(3,), n=70, dtype=torch.float32, seed=7, device=DEVICE)
    base = bk_core(*p.inputs(), mode="causal", backend="triton")
    for k in (0, 15, 16, 40, 68):
        diag = p.diag.clone()
        diag[..., k + 1:] += 1.0
        changed = bk_core(diag, p.upper, p.lower, p.z, mode="causal", backend="triton")
        assert torch.equal(changed[..., : k + 1], base[..., : k + 1]), f"position <= {k} moved"
        assert not torch.equal(changed[..., k + 1:], base[..., k + 1:])


def test_causal_gradient_does_not_flow_backwards_in_time(chunking):
    p = make_problem(batch=(2,), n=50, seed=1, device=DEVICE)
    diag, upper, lower, z = p.leaves()
    bk_core(diag, upper, lower, z, mode="causal", backend="triton")[..., :20].abs().sum().backward()
    assert torch.count_nonzero(diag.grad[..., 20:]) == 0
    assert torch.count_nonzero(upper.grad[..., 19:]) == 0
    assert torch.count_nonzero(diag.grad[..., :20]) > 0


@pytest.mark.parametrize("mode", MODES)
def test_masked_output_and_gradients_match_torch(kernels, mode):
    p = make_problem(batch=(2,), n=33, seed=3)
    mask = torch.rand(2, 33, generator=torch.Generator().manual_seed(0)) > 0.4
    results = []
    for backend, device in (("torch", "cpu"), ("triton", DEVICE)):
        leaves = [None if t is None else t.detach().to(device).requires_grad_() for t in p.inputs()]
        out = bk_core(*leaves, mode=mode, backend=backend, mask=mask.to(device))
        out.abs().sum().backward()
        results.append([out.detach().cpu()] + [t.grad.cpu() for t in leaves])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_long_float32_row_stays_finite_and_accurate(chunking):
    """1,000 sites at a small Im z in float32 against Rust in float64: the renormalised scan holds."""
    p = make_problem(batch=(2,), n=1000, z=0.3 + 0.01j, seed=9)
    want = bk_core(*p.inputs(), mode="causal", backend="rust")
    q = [None if t is None else t.to(DEVICE) for t in make_problem(batch=(2,), n=1000, z=0.3 + 0.01j, seed=9,
                                                                  dtype=torch.float32).inputs()]
    got = bk_core(*q, mode="causal", backend="triton").cpu()
    assert torch.isfinite(torch.view_as_real(got)).all()
    assert relative_rms(got, want) <= 1e-4


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_opcheck(kernels):
    """The custom op's registrations (fake tensor, autograd, schema) hold with the Triton backend."""
    p = make_problem(batch=(2,), n=6, device=DEVICE)
    torch.library.opcheck(torch.ops.resnetbk.bk_core.default, (*p.leaves(), "causal", "triton"))


def test_empty_batch(kernels):
    diag = torch.zeros(0, 6, device=DEVICE, requires_grad=True)
    out = bk_core(diag, torch.ones(0, 5, device=DEVICE), backend="triton")
    assert out.shape == (0, 6) and out.dtype == torch.complex64
    out.real.sum().backward()
    assert diag.grad.shape == (0, 6)


def test_kernels_compile_for_hopper():
    """Every kernel, float32 and float64, builds to a cubin for sm_90 (H100/H200) with the ptxas triton
    ships: the compiled path, which the interpreter above never exercises, at least compiles."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).resolve().parents[2] / "scripts" / "compile_triton_kernels.py"
    done = subprocess.run([sys.executable, str(script), "--arch", "90"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("sm_90")]
    assert len(lines) == 12 and all("1 warps" in line for line in lines), done.stdout


def test_chunk_length_rule():
    from resnetbk.core.triton_kernels import CHUNK_MIN_LENGTH, ROWS_TO_FILL_GPU, chunk_length

    assert chunk_length(32, CHUNK_MIN_LENGTH - 1) == CHUNK_MIN_LENGTH - 1  # short rows: one pass
    assert chunk_length(ROWS_TO_FILL_GPU, 1 << 20) == 1 << 20  # enough rows: one pass
    for n in (256, 2048, 65_536, 1_000_003):
        c = chunk_length(32, n)
        assert c & (c - 1) == 0 and 16 <= c and c * c >= n and (c // 2) ** 2 < n


def test_auto_picks_triton_on_cuda_only():
    assert backends.choose(torch.device("cuda"), "exact") == "triton"
    assert backends.choose(torch.device("cuda"), "autograd") == "torch"
    assert backends.choose(torch.device("cpu"), "exact") == "rust"
    assert torch_backend.METHODS[-1] == "triton"


def test_errors_name_the_backend(monkeypatch):
    p = make_problem(batch=(2,), n=5)
    with pytest.raises(ValueError, match="backend='triton' has no autograd graph"):
        bk_core(*p.inputs(), backend="triton", grad="autograd")
    monkeypatch.setattr(backends, "triton_interpreted", lambda: False)
    with pytest.raises(ValueError, match=r"runs on CUDA tensors only.*TRITON_INTERPRET=1"):
        bk_core(*p.inputs(), backend="triton")
    monkeypatch.setattr(backends, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        bk_core(*p.inputs(), backend="triton")


def test_all_three_gpu_backends_agree_on_a_batch_of_odd_rows(kernels):
    """triton, torch_sweep and torch_scan on the same device, pairwise (the CUDA path's three)."""
    p = make_problem(batch=(5,), n=31, seed=11)
    results = {b: _forward_and_grads(p, "bidirectional", b, DEVICE) for b in ("triton", "torch_sweep", "torch_scan")}
    for (a, (out_a, grads_a)), (b, (out_b, grads_b)) in itertools.combinations(results.items(), 2):
        assert relative_rms(out_a, out_b) <= 1e-12, (a, b)
        for ga, gb in zip(grads_a, grads_b):
            assert relative_rms(ga, gb) <= 1e-11, (a, b)
