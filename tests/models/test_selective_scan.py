"""Mamba's selective scan through the Rust kernel against the definition (float64) and against
mambapy's own parallel scan, forward and every gradient, on odd sizes; the Mamba model runs it on
a float32 CPU and falls back to mambapy's scan elsewhere; bad shapes are named errors."""

import copy
import pickle

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from resnetbk.models import ModelOptions, build_model
from resnetbk.models import selective_scan as scan_module
from resnetbk.models.selective_scan import reference_selective_scan, selective_scan


def inputs(batch, length, inner, states, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, inner, generator=g, dtype=dtype)
    delta = torch.rand(batch, length, inner, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -(torch.rand(inner, states, generator=g, dtype=dtype) * 4 + 0.1)
    B = torch.randn(batch, length, states, generator=g, dtype=dtype)
    C = torch.randn(batch, length, states, generator=g, dtype=dtype)
    D = torch.randn(inner, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, delta, A, B, C, D)]


def value_and_grads(scan, tensors, grad_out):
    y = scan(*tensors)
    return [y, *torch.autograd.grad(y, tensors, grad_out.to(y.dtype))]


@pytest.mark.parametrize("shape", [(3, 37, 11, 16), (1, 1, 1, 1), (2, 50, 7, 5), (4, 9, 131, 16)])
def test_the_kernel_matches_the_float64_definition_forward_and_every_gradient(shape):
    exact_inputs = inputs(*shape)
    grad_out = torch.randn(shape[:3], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact = value_and_grads(reference_selective_scan, exact_inputs, grad_out)
    fast = value_and_grads(selective_scan, [t.detach().float().requires_grad_() for t in exact_inputs], grad_out)
    for name, a, b in zip(["y", "x", "delta", "A", "B", "C", "D"], exact, fast):
        scale = a.abs().max().clamp_min(1.0)
        assert ((b.double() - a).abs().max() / scale).item() < 2e-5, name


def test_the_reference_is_mambapys_scan():
    from mambapy.mamba import MambaBlock, MambaConfig

    mixer = MambaBlock(MambaConfig(d_model=8, n_layers=1, d_state=16))
    tensors = inputs(2, 24, 16, 16, dtype=torch.float32)
    grad_out = torch.randn(2, 24, 16)
    theirs = value_and_grads(lambda *t: MambaBlock.selective_scan(mixer, *t), tensors, grad_out)
    ours = value_and_grads(reference_selective_scan, tensors, grad_out)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def mamba_model():
    torch.manual_seed(0)
    return build_model(ModelOptions(architecture="mamba", vocab_size=50, d_model=16, n_layers=2, n_seq=24,
                                    dropout=0.0))


def test_the_mamba_model_trains_the_same_through_the_kernel_and_through_mambapys_scan(monkeypatch):
    tokens = torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(2))
    results = []
    for kernel in (True, False):
        monkeypatch.setattr(scan_module, "use_kernel", kernel)
        model = mamba_model()
        loss, _ = model(tokens, tokens)
        results.append([loss.detach(), *torch.autograd.grad(loss, list(model.parameters()))])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_kernel_runs_in_the_model_and_steps_aside_for_the_flop_counter(monkeypatch):
    model = mamba_model()
    calls = []
    real = scan_module._SelectiveScan.apply
    monkeypatch.setattr(scan_module._SelectiveScan, "apply", lambda *a: calls.append(1) or real(*a))
    tokens = torch.randint(0, 50, (2, 24))
    model(tokens)
    assert len(calls) == 4  # 2 blocks x 2 Mamba layers
    with FlopCounterMode(display=False) as counter:
        model(tokens)
    assert len(calls) == 4 and counter.get_total_flops() > 0  # torch's ops, priced
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert all(type(layer.mixer).__name__ == "KernelScanMambaBlock" for b in copied.blocks for layer in b.layers)
        torch.testing.assert_close(copied(tokens), model(tokens))


def test_the_mamba_model_stays_causal_through_the_kernel():
    from resnetbk.measure.causality import probe_causality

    assert probe_causality(mamba_model(), 50, 24).causal


def test_bad_shapes_and_dtypes_are_named_errors():
    x, delta, A, B, C, D = [t.detach().float() for t in inputs(2, 5, 3, 4)]
    with pytest.raises(ValueError, match=r"C: expected shape \(2, 5, 4\)"):
        selective_scan(x, delta, A, B, C[:, :4], D)
    with pytest.raises(ValueError, match="the kernel takes float32 CPU tensors"):
        selective_scan(x.double(), delta, A, B, C, D)


def test_a_pickled_mamba_model_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(mamba_model()))
    code = ("import pickle, sys; m = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(type(m.blocks[0].layers[0].mixer).__name__)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "KernelScanMambaBlock", out.stderr[-1500:]
