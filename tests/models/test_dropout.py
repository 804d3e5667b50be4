"""``models.dropout``: the kernel's dropout against dropout's definition (share kept, scale, the
backward's mask equal to the forward's, seeds from torch's generator), the fallbacks, and the
Transformer's attention with its own dropout (equal to ``scaled_dot_product_attention`` without
it, forward and every gradient, and causal)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from resnetbk.flops import FlopsTracer
from resnetbk.models import dropout as dropout_module
from resnetbk.models import transformer
from resnetbk.models.dropout import Dropout, dropout


def test_keeps_the_share_scales_and_the_backward_uses_the_forward_mask():
    torch.manual_seed(0)
    x = (torch.rand(64, 513) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01  # 33k elements: 4 standard deviations
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.7)
    upstream = torch.randn_like(y)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, upstream * kept / 0.7)


def test_torch_seed_decides_the_mask():
    x = torch.ones(1000)
    torch.manual_seed(5)
    a = dropout(x, 0.5)
    torch.manual_seed(5)
    b = dropout(x, 0.5)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_non_contiguous_input_and_the_trivial_cases():
    torch.manual_seed(1)
    x = torch.rand(40, 30).t() + 1.0
    y = dropout(x, 0.5)
    assert y.shape == x.shape and torch.all((y == 0) | torch.isclose(y, 2 * x))
    assert dropout(x, 0.0) is x and dropout(x, 0.5, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_other_dtypes_and_dispatch_modes_use_torch():
    calls = mock.Mock(wraps=dropout_module._native.dropout_f32)
    with mock.patch.object(dropout_module._native, "dropout_f32", calls):
        dropout(torch.ones(10, dtype=torch.float64), 0.5)
        with FlopsTracer():
            dropout(torch.ones(10), 0.5)
        assert calls.call_count == 0
        dropout(torch.ones(10), 0.5)
        assert calls.call_count == 1


def test_attention_with_dropout_is_sdpa_without_it_and_causal():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 11, 8, requires_grad=True) for _ in range(3))
    with mock.patch.object(transformer, "dropout", lambda probs, p: probs):
        ours = transformer.causal_attention_with_dropout(q, k, v, 0.5)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(sdpa)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), upstream), torch.autograd.grad(sdpa, (q, k, v), upstream)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # every gradient too (the mask is outside autograd)
    y = transformer.causal_attention_with_dropout(q, k, v, 0.5)
    y[:, :, 4].sum().backward()
    for t in (q, k, v):
        assert t.grad[:, :, 5:].abs().max() == 0  # nothing after position 4 reaches it


@pytest.mark.parametrize("training", [True, False])
def test_the_attention_module_takes_the_manual_path_only_when_training_on_float32_cpu_without_its_kernel(training):
    torch.manual_seed(3)
    attention = transformer.CausalSelfAttention(16, 4, dropout=0.1).train(training)
    with mock.patch.object(transformer.attention, "use_kernel", False), \
            mock.patch.object(transformer, "causal_attention_with_dropout",
                              wraps=transformer.causal_attention_with_dropout) as manual:
        attention(torch.randn(2, 7, 16))
        attention.double()(torch.randn(2, 7, 16, dtype=torch.float64))
    assert manual.call_count == (1 if training else 0)
