"""The Transformer baseline: pre-norm blocks of causal multi-head self-attention and a 4d MLP.

``PostNormTransformerBlock`` and ``sinusoidal_positions`` are PyTorch's word_language_model
example's Transformer (for the reproduction of its published run, ``bench.reproduce``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import attention
from .dropout import Dropout, dropout, kernel_applies


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model: {d_model} is not divisible by n_heads = {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.resid_dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x)
        dropping = self.training and self.dropout > 0
        if dropping and self.dropout < 1 and attention.kernel_applies(qkv):
            return self.resid_dropout(self.proj(attention.causal_attention(qkv, self.n_heads, self.dropout)))
        q, k, v = qkv.view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        if dropping and kernel_applies(x):
            y = causal_attention_with_dropout(q, k, v, self.dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if dropping else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, n, d)))


def causal_attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, p: float) -> Tensor:
    """What ``scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)`` computes on a
    CPU (its math path: scores, causal mask, softmax, dropout, values), with the attention
    probabilities dropped out by ``models.dropout`` instead of torch's slow CPU sampler: the
    reference of ``models.attention``'s kernel, and the path where that kernel is switched off."""
    n = q.shape[-2]
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # scaled on q: N/d x fewer products
    future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu_(1)
    # Masked outside autograd: the softmax's backward already gives the masked scores a zero
    # gradient (their probabilities are 0), and nothing saved for the backward reads the scores,
    # so recording the fill would only add a pass over them to the backward.
    with torch.no_grad():
        scores.masked_fill_(future, float("-inf"))
    return dropout(torch.softmax(scores, dim=-1), p) @ v


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = CausalSelfAttention(d_model, n_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model), Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PostNormTransformerBlock(nn.Module):
    """torch's ``TransformerEncoderLayer`` (post-norm, ReLU MLP of width ``d_ff``, dropout in
    attention and MLP) under a causal mask: the word_language_model example's layer."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=x.dtype)
        return self.layer(x, src_mask=mask, is_causal=True)


def sinusoidal_positions(n: int, d_model: int) -> Tensor:
    """``(n, d_model)``: sin on even, cos on odd features, wavelengths 2*pi up to 10000*2*pi
    (Vaswani et al. 2017)."""
    position = torch.arange(n, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table
