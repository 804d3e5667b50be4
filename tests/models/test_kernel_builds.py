"""The step kernels' narrower builds (what an AVX2-only or a baseline x86-64 CPU runs), forced on
this machine with ``RESNETBK_KERNEL_ISA``: the LM head, dropout, attention and Mamba's selective scan
against torch's ops, in a fresh
process per build (the choice is read once per process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = """
import torch
from resnetbk.models import head
from resnetbk.models.dropout import dropout
torch.manual_seed(0)
h = torch.randn(150, 64, requires_grad=True)
w = (0.1 * torch.randn(2003, 64)).requires_grad_()
y = torch.randint(0, 2003, (150,))
y[::9] = -100
results = []
for kernel in (True, False):
    head.use_kernel = kernel
    loss = head.linear_cross_entropy(h, w, y, rows_per_block=64)
    results.append((loss.detach(), *torch.autograd.grad(loss, (h, w))))
for a, b in zip(*results):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
x = torch.rand(100_000) + 0.5
kept = dropout(x, 0.25) != 0
assert abs(kept.float().mean().item() - 0.75) < 0.01
from resnetbk.models import attention, transformer
for heads, width in ((2, 16), (3, 5)):  # a head width compiled in, and one that is not
    qkv = torch.randn(2, 70, 3 * heads * width, requires_grad=True)
    results = []
    for kernel in (True, False):
        torch.manual_seed(2)  # the same masks
        if kernel:
            y = attention.causal_attention(qkv, heads, 0.2)
        else:
            q, k, v = qkv.view(2, 70, 3, heads, width).permute(2, 0, 3, 1, 4)
            y = transformer.causal_attention_with_dropout(q, k, v, 0.2).transpose(1, 2).reshape(2, 70, heads * width)
        results.append((y, *torch.autograd.grad(y.square().sum(), qkv)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
from resnetbk.models.selective_scan import reference_selective_scan, selective_scan
for states in (16, 5):  # the state count compiled in, and one that is not
    x, B, C = torch.randn(2, 33, 7), torch.randn(2, 33, states), torch.randn(2, 33, states)
    delta, A, D = torch.rand(2, 33, 7) * 0.5, -torch.rand(7, states) * 3, torch.randn(7)
    inputs = [t.requires_grad_() for t in (x, delta, A, B, C, D)]
    results = []
    for scan in (selective_scan, reference_selective_scan):
        y = scan(*inputs)
        results.append((y, *torch.autograd.grad(y.square().sum(), inputs)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_the_narrower_builds_agree_with_torch(isa):
    env = {**os.environ, "RESNETBK_KERNEL_ISA": isa}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
