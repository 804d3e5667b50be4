"""``models.attention``: the Rust causal attention with dropout against its reference, torch's ops
(``transformer.causal_attention_with_dropout``, itself tested against
``scaled_dot_product_attention``), with the same masks from the same generator state: forward
and the gradient of the fused projection on odd sizes (several query blocks, a padded last one,
head widths compiled in and not), causal, independent of the thread count, bad input named, and
the Transformer's training step equal to the reference path's."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resnetbk import _native
from resnetbk.flops import FlopsTracer
from resnetbk.models import attention, transformer

SHAPES = [(2, 7, 3, 5), (1, 130, 2, 16), (3, 65, 1, 8), (2, 64, 4, 16), (1, 33, 2, 32), (2, 19, 1, 64)]


def reference(qkv, n_heads, p):
    b, n, three_d = qkv.shape
    q, k, v = qkv.view(b, n, 3, n_heads, three_d // (3 * n_heads)).permute(2, 0, 3, 1, 4)
    y = (transformer.causal_attention_with_dropout(q, k, v, p) if p > 0
         else F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return y.transpose(1, 2).reshape(b, n, three_d // 3)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_equals_the_torch_ops_with_the_same_masks_forward_and_gradient(shape, p):
    b, n, heads, head_dim = shape
    torch.manual_seed(1)
    qkv = torch.randn(b, n, 3 * heads * head_dim, requires_grad=True)
    upstream = torch.randn(b, n, heads * head_dim)
    results = []
    for run in (attention.causal_attention, reference):
        torch.manual_seed(7)  # the same seed drawn for the masks
        out = run(qkv, heads, p)
        results.append((out, *torch.autograd.grad(out, qkv, upstream)))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_causal_and_the_dropout_share():
    torch.manual_seed(2)
    qkv = torch.randn(2, 40, 3 * 16, requires_grad=True)
    out = attention.causal_attention(qkv, 2, 0.5)
    out[:, 17].sum().backward()
    assert qkv.grad[:, 18:].abs().max() == 0  # nothing after position 17 reaches it
    assert qkv.grad[:, :18].abs().max() > 0
    # With values of ones each output is the kept probabilities' sum over keep: mean 1 at p = 0.5.
    ones = torch.randn(4, 128, 3 * 16)
    ones[..., 32:] = 1.0
    sums = attention.causal_attention(ones, 1, 0.5)[:, 64:]
    assert abs(sums.mean().item() - 1.0) < 0.05


def test_the_same_result_whatever_the_thread_count():
    torch.manual_seed(3)
    qkv = torch.randn(3, 70, 3 * 32, requires_grad=True)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            torch.manual_seed(4)
            out = attention.causal_attention(qkv, 2, 0.1)
            results.append((out, *torch.autograd.grad(out.square().sum(), qkv)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="qkv: expected"):
        attention.causal_attention(torch.randn(2, 5, 10), 2, 0.1)
    with pytest.raises(ValueError, match="qkv: the kernel takes float32 on the CPU"):
        attention.causal_attention(torch.randn(2, 5, 12, dtype=torch.float64), 2, 0.1)
    with pytest.raises(ValueError, match="p: expected"):
        attention.causal_attention(torch.randn(2, 5, 12), 2, 1.0)
    flat = np.zeros(10, dtype=np.float32)
    with pytest.raises(ValueError, match="qkv: expected 72 elements"):
        _native.causal_attention_forward_f32(flat, np.zeros(24, np.float32), np.zeros(8, np.float32),
                                             1, 4, 2, 3, 1.0, 1.0, 0, 1)
    with pytest.raises(ValueError, match="keep: expected"):
        _native.causal_attention_forward_f32(np.zeros(72, np.float32), np.zeros(24, np.float32),
                                             np.zeros(8, np.float32), 1, 4, 2, 3, 1.0, 0.0, 0, 1)
    with pytest.raises(ValueError, match="grad_qkv: expected 72 elements"):
        _native.causal_attention_backward_f32(np.zeros(72, np.float32), np.zeros(24, np.float32),
                                              np.zeros(8, np.float32), flat, 1, 4, 2, 3, 1.0, 1.0, 0, 1)


def test_the_module_runs_the_kernel_only_when_training_with_dropout_on_float32_cpu_untraced():
    torch.manual_seed(5)
    layer = transformer.CausalSelfAttention(16, 4, dropout=0.1)
    x = torch.randn(2, 9, 16)
    with mock.patch.object(attention, "causal_attention", wraps=attention.causal_attention) as kernel:
        layer.train()(x)
        assert kernel.call_count == 1
        layer.eval()(x)
        with FlopsTracer():
            layer.train()(x)
        layer.double()(x.double())
        assert kernel.call_count == 1


def test_a_transformer_training_step_equals_the_reference_paths():
    from resnetbk.models import ModelOptions, build_model

    options = ModelOptions(architecture="transformer", d_model=32, n_layers=2, n_seq=24, n_heads=4, dropout=0.2,
                           vocab_size=50)
    x = torch.randint(0, 50, (3, 24))
    results = []
    for kernel in (True, False):
        torch.manual_seed(0)
        model = build_model(options).train()
        with mock.patch.object(attention, "use_kernel", kernel):
            nll_sum, _ = model(x, x, fused_head=True)
            grads = torch.autograd.grad(nll_sum, list(model.parameters()))
        results.append((nll_sum.detach(), *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
