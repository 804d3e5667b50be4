"""ResNet-BK: residual blocks whose only sequence mixer is the BK-Core.

Each block: LayerNorm -> mixture-of-experts feed-forward -> potential ``v = v_proj(ffn_out)``
-> ``H = H0 + diag(v)`` (H0 the discrete Laplacian: -2 on the diagonal, 1 beside it) ->
``G = bk_core(H, z = i)`` -> ``(Re G, Im G)`` -> ``output_proj`` scaled by a learnable
``bk_scale``, added to the feed-forward output; the sum is the block's residual update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import bk_core

#: The Laplacian's diagonal and off-diagonal entries (H0).
LAPLACIAN_DIAG, LAPLACIAN_OFF = -2.0, 1.0


class MoEFeedForward(nn.Module):
    """Top-1 mixture of experts (d -> 2d -> d, ReLU, dropout) with a trainable router.

    The router's softmax runs over all experts and each token's expert output is scaled by its
    chosen probability, so the router gets a gradient; ``aux_loss`` is the load-balancing loss
    ``E * sum_e f_e P_e`` (f: fraction of tokens routed to e, P: mean router probability of e).
    """

    def __init__(self, d_model: int, num_experts: int, dropout: float):
        super().__init__()
        self.router = nn.Linear(d_model, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))
            for _ in range(num_experts)
        )
        self.aux_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        probs = F.softmax(self.router(flat), dim=-1)
        chosen_prob, chosen = probs.max(dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).nonzero(as_tuple=True)[0]
            if rows.numel():
                out.index_add_(0, rows, (expert(flat[rows]) * chosen_prob[rows, None]).to(out.dtype))
        num_experts = len(self.experts)
        fraction = torch.bincount(chosen, minlength=num_experts).to(probs.dtype) / chosen.numel()
        self.aux_loss = num_experts * (fraction * probs.mean(dim=0)).sum()
        return out.view_as(x)


class BKMixer(nn.Module):
    """The BK-Core mixer: ``channels`` independent tridiagonal systems driven by the block's input."""

    def __init__(self, d_model: int, channels: int, mode: str, potential_limit: float, analytic_gradient: bool):
        super().__init__()
        self.mode = mode
        self.potential_limit = potential_limit
        self.grad = "exact" if analytic_gradient else "autograd"
        self.v_proj = nn.Linear(d_model, channels)
        self.output_proj = nn.Linear(2 * channels, d_model)
        self.bk_scale = nn.Parameter(torch.ones(()))

    def forward(self, h: Tensor) -> Tensor:
        b, n, _ = h.shape
        # A soft clamp (tanh) bounds the potential yet keeps its gradient everywhere.
        v = self.potential_limit * torch.tanh(self.v_proj(h) / self.potential_limit)
        diag = (LAPLACIAN_DIAG + v).transpose(1, 2)  # (B, C, N)
        if diag.dtype in (torch.float16, torch.bfloat16):  # under autocast the BK-Core stays float32
            diag = diag.float()
        upper = torch.full((n - 1,), LAPLACIAN_OFF, device=h.device, dtype=diag.dtype)
        g = bk_core(diag, upper, None, 1j, mode=self.mode, grad=self.grad, backend="auto")
        features = torch.cat([g.real, g.imag], dim=1).transpose(1, 2)  # (B, N, 2C)
        return self.bk_scale * self.output_proj(features.to(h.dtype))


class ResNetBKBlock(nn.Module):
    def __init__(self, d_model: int, num_experts: int, dropout: float, channels: int, mode: str,
                 potential_limit: float, analytic_gradient: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.moe = MoEFeedForward(d_model, num_experts, dropout)
        self.bk = BKMixer(d_model, channels, mode, potential_limit, analytic_gradient)

    @property
    def aux_loss(self) -> Tensor | None:
        return self.moe.aux_loss

    def forward(self, x: Tensor) -> Tensor:
        ffn_out = self.moe(self.norm(x))
        return x + ffn_out + self.bk(ffn_out)
