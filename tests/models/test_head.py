"""The fused chunked LM head (``models.head``) against the plain path: loss and every gradient,
on odd sizes, ignored targets, blocks with nothing to predict, tied weights, autocast, and the
FLOPs trace; for float32 on a CPU both of its implementations (the Rust kernel and torch's
ops)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from resnetbk.flops import FlopsTracer
from resnetbk.models import ModelOptions, build_model
from resnetbk.models import head as head_module
from resnetbk.models.head import IGNORE_INDEX, block_rows, linear_cross_entropy, reference_linear_cross_entropy


def problem(rows=37, d=8, vocab=101, dtype=torch.float32, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, d, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(vocab, d, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(vocab, generator=gen, dtype=dtype).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    return hidden, weight, b, targets


@pytest.fixture(params=["kernel", "torch"], autouse=True)
def implementation(request, monkeypatch):
    """Every test runs with float32 CPU blocks through the Rust kernel and through torch's ops."""
    monkeypatch.setattr(head_module, "use_kernel", request.param == "kernel")
    return request.param


def loss_and_grads(fn, hidden, weight, bias, targets, **kwargs):
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    loss = fn(hidden, weight, targets, bias, **kwargs)
    return loss.detach(), torch.autograd.grad(loss * 1.7, inputs)  # a non-unit upstream gradient


def assert_same(fused, plain, rtol, atol):
    torch.testing.assert_close(fused[0], plain[0], rtol=rtol, atol=atol)
    for a, b in zip(fused[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float32, 1e-5, 1e-5), (torch.float64, 1e-12, 1e-12)])
@pytest.mark.parametrize("rows_per_block", [1, 5, 37, 64, None])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_the_plain_path(dtype, rtol, atol, rows_per_block, bias, reduction):
    hidden, weight, b, targets = problem(dtype=dtype, bias=bias)
    targets[[0, 4, 36]] = IGNORE_INDEX
    kwargs = dict(reduction=reduction)
    fused = loss_and_grads(linear_cross_entropy, hidden, weight, b, targets, rows_per_block=rows_per_block, **kwargs)
    plain = loss_and_grads(reference_linear_cross_entropy, hidden, weight, b, targets, **kwargs)
    assert_same(fused, plain, rtol, atol)


def test_blocks_with_no_target_and_all_ignored():
    hidden, weight, b, targets = problem(rows=23)
    targets[5:15] = IGNORE_INDEX  # blocks of 5 rows: two are entirely ignored
    fused = loss_and_grads(linear_cross_entropy, hidden, weight, b, targets, rows_per_block=5)
    assert_same(fused, loss_and_grads(reference_linear_cross_entropy, hidden, weight, b, targets), 1e-5, 1e-5)
    assert fused[1][0][5:15].abs().max() == 0  # ignored rows get no gradient
    targets[:] = IGNORE_INDEX
    loss, grads = loss_and_grads(linear_cross_entropy, hidden, weight, b, targets, rows_per_block=5)
    assert loss == 0 and all(g.abs().max() == 0 for g in grads)


def test_leading_dimensions_and_large_logits():
    hidden, weight, _, targets = problem(rows=3 * 11, d=5, vocab=17)
    hidden = (hidden.detach() * 40).reshape(3, 11, 5).requires_grad_()  # logits of hundreds: the shift matters
    fused = loss_and_grads(linear_cross_entropy, hidden, weight, None, targets.reshape(3, 11), rows_per_block=4)
    plain = loss_and_grads(reference_linear_cross_entropy, hidden, weight, None, targets.reshape(3, 11))
    assert torch.isfinite(fused[0])
    assert_same(fused, plain, 1e-5, 1e-3)  # gradients of size ~300: float32 rounding


def test_tied_weights_accumulate_both_gradients():
    torch.manual_seed(0)
    options = ModelOptions(architecture="transformer", vocab_size=97, d_model=16, n_layers=2, n_seq=12, dropout=0.0,
                           tie_embeddings=True)
    model = build_model(options)
    x, y = torch.randint(0, 97, (3, 12)), torch.randint(0, 97, (3, 12))
    y[0, :5] = IGNORE_INDEX
    grads = []
    for fused in (True, False):
        model.zero_grad()
        loss, _ = model(x, y, fused_head=fused)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.lm_head.weight is model.token_embedding.weight
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_under_bf16_autocast():
    hidden, weight, b, targets = problem(rows=45, d=16, vocab=203)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = loss_and_grads(linear_cross_entropy, hidden, weight, b, targets, rows_per_block=8)
        plain = loss_and_grads(reference_linear_cross_entropy, hidden, weight, b, targets)
    assert fused[0].dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in fused[1])
    # bf16 products: both paths round alike but accumulate differently (the fused one in float32).
    assert_same(fused, plain, 2e-2, 2e-2)


def test_bad_arguments_are_named():
    hidden, weight, _, targets = problem()
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :-1], targets)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")


def test_block_rows_are_multiples_of_32():
    assert block_rows(33_278) % 32 == 0 and block_rows(33_278) >= 32
    assert block_rows(10**9) == 32


@pytest.mark.parametrize("architecture", ["transformer", "resnet_bk"])
def test_the_trace_prices_the_head_as_the_plain_path_does(architecture):
    """The head's matmuls, forward and backward, and the model's other components are priced alike."""
    torch.manual_seed(0)
    options = ModelOptions(architecture=architecture, vocab_size=301, d_model=16, n_layers=2, n_seq=24,
                           dropout=0.0, tie_embeddings=False)
    model = build_model(options)
    x, y = torch.randint(0, 301, (2, 24)), torch.randint(0, 301, (2, 24))
    reports = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)  # no accumulation into earlier gradients
        tracer = FlopsTracer()
        with tracer:
            loss, _ = model(x, y, fused_head=fused)
            loss.backward()
        reports.append(tracer.report())
    fused_report, plain_report = reports
    assert not fused_report["unknown"]
    head = {r: rep["by_component"]["lm_head"] for r, rep in zip(("fused", "plain"), reports)}
    assert head["plain"] == {"forward": 2 * 48 * 16 * 301, "backward": 2 * 2 * 48 * 16 * 301}
    # The same matmuls; the fused backward also adds each block's weight gradient into the total
    # (V x d additions per block; one block here).
    assert head["fused"] == {"forward": 2 * 48 * 16 * 301, "backward": 2 * 2 * 48 * 16 * 301 + 301 * 16}
    for component, phases in plain_report["by_component"].items():
        if component not in ("lm_head", "model (top level)", "(outside modules)"):
            assert fused_report["by_component"][component] == phases, component


def test_without_grad_mode_no_gradient_work_is_done():
    """Evaluation runs under no_grad with parameters that require grad: the head must do its
    forward matmul only (a Function's needs_input_grad ignores grad mode)."""
    hidden, weight, bias, targets = problem(rows=40, d=8, vocab=101)
    expected = reference_linear_cross_entropy(hidden, weight, targets, bias).detach()
    tracer = FlopsTracer()
    with torch.no_grad(), tracer:
        loss = linear_cross_entropy(hidden, weight, targets, bias)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    report = tracer.report()
    assert report["by_phase"].get("backward", 0) == 0
    assert report["by_category"]["matmul"] == 2 * 40 * 8 * 101  # h W^T alone


def test_the_kernel_runs_on_float32_cpu_blocks_and_nowhere_else(implementation):
    calls = mock.Mock(wraps=head_module._native.softmax_xent_grad_f32)
    hidden, weight, b, targets = problem(rows=20)
    with mock.patch.object(head_module._native, "softmax_xent_grad_f32", calls):
        linear_cross_entropy(hidden, weight, targets, b, rows_per_block=8)  # 3 blocks
        linear_cross_entropy(hidden.double(), weight.double(), targets, b.double(), rows_per_block=8)
        with FlopsTracer():
            linear_cross_entropy(hidden, weight, targets, b, rows_per_block=8)
    assert calls.call_count == (3 if implementation == "kernel" else 0)


@pytest.mark.parametrize("rows, vocab, rows_per_block", [(300, 2_003, 128), (129, 33_278, 64)])
def test_kernel_and_torch_ops_agree_at_benchmark_like_sizes(rows, vocab, rows_per_block):
    hidden, weight, b, targets = problem(rows=rows, d=64, vocab=vocab)
    targets[::7] = IGNORE_INDEX
    results = {}
    for kernel in (True, False):
        with mock.patch.object(head_module, "use_kernel", kernel):
            results[kernel] = loss_and_grads(linear_cross_entropy, hidden, weight, b, targets,
                                             rows_per_block=rows_per_block)
    (loss, grads), (loss_torch, grads_torch) = results[True], results[False]
    torch.testing.assert_close(loss, loss_torch, rtol=1e-6, atol=0)
    for g, g_torch in zip(grads, grads_torch):  # sums over thousands of words: float32 rounding of their scale
        torch.testing.assert_close(g, g_torch, rtol=1e-5, atol=1e-5 * g_torch.abs().max().item())


def test_evaluation_without_gradients_gives_the_same_loss():
    hidden, weight, b, targets = problem(rows=50, vocab=300)
    with_grad = linear_cross_entropy(hidden, weight, targets, b, rows_per_block=16)
    with torch.no_grad():
        without = linear_cross_entropy(hidden, weight, targets, b, rows_per_block=16)
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-6, atol=1e-5)


def test_a_target_outside_the_vocabulary_is_a_named_error(implementation):
    hidden, weight, b, targets = problem(rows=10, vocab=50)
    targets[3] = 50
    # (torch's gather raises its own index error.)
    error = (ValueError, "targets: row 3 has target 50") if implementation == "kernel" else (RuntimeError, "index")
    with pytest.raises(error[0], match=error[1]):
        linear_cross_entropy(hidden, weight, targets, b)


def test_a_non_finite_hidden_state_gives_a_non_finite_loss():
    hidden, weight, b, targets = problem(rows=10, vocab=50)
    hidden = hidden.detach().clone()
    hidden[2, 0] = float("nan")
    assert not torch.isfinite(linear_cross_entropy(hidden, weight, targets, b))
