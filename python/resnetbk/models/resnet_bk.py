"""ResNet-BK: residual blocks whose only sequence mixer is the BK-Core.

Each block: LayerNorm -> mixture-of-experts feed-forward -> potential ``v = v_proj(ffn_out)``
-> ``H = H0 + diag(v)`` (H0 the discrete Laplacian: -2 on the diagonal, 1 beside it) ->
``G = bk_core(H, z = i)`` -> ``(Re G, Im G)`` -> ``output_proj`` scaled by a learnable
``bk_scale``, added to the feed-forward output; the sum is the block's residual update.

With ``spectral`` (the ``use_spectral_z`` method) every channel has its own learnable
``z = E + i*eta`` instead of the fixed ``z = i``: ``E`` starts at 0 (fixed z's real part), ``eta``
is learnt on a log scale and starts log-spaced over ``[eta_min, eta_max]``. Why it matters: the
causal recursion ``g_k = 1/(a_k - z - g_{k-1})`` forgets the past at the rate
``|dg_k/dg_{k-1}| = |g_k|^2``, about 0.25 a step at ``z = i``; a small ``eta`` lets ``|g_k|``
approach 1, so a channel can remember far back, while ``Im(a_k - z - g_{k-1}) <= -eta`` keeps
``|g_k| <= 1/eta`` (bounded, no overflow).

Two options serve the optimization methods:

* ``active`` (a bool per position, or None): only active positions get the feed-forward work
  and an update (the rows are gathered, computed and scattered back); the others keep their
  state, and the BK-Core recursion still runs over the complete sequence. This is how halted
  (ACT) or exited (early exit) tokens really skip later blocks.
* ``sparse`` (``BKMixer``): a learned per-position gate; gated-off positions get potential 0,
  skip the potential projection and the read-out, and the BK-Core skips their read-out.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import bk_core

#: The Laplacian's diagonal and off-diagonal entries (H0).
LAPLACIAN_DIAG, LAPLACIAN_OFF = -2.0, 1.0
#: The smallest eta a learnt spectral parameter may reach: keeps ``|G| <= 1/eta`` at most 1e4,
#: well inside float32 for the forward and the adjoint.
ETA_FLOOR = 1e-4


def scatter_rows(rows: Tensor, values: Tensor, total: int, like: Tensor) -> Tensor:
    """``(total, values.shape[-1])`` zeros of ``like``'s dtype with ``values`` at ``rows``: the
    scatter half of gather-compute-scatter (differentiable in ``values``)."""
    return like.new_zeros(total, values.shape[-1]).index_copy(0, rows, values.to(like.dtype))


class MoEFeedForward(nn.Module):
    """Top-1 mixture of experts (d -> 2d -> d, ReLU) with a trainable router, on rows ``(T, d)``.

    The router's softmax runs over all experts and each token's expert output is scaled by its
    chosen probability, so the router gets a gradient; ``aux_loss`` is the load-balancing loss
    ``E * sum_e f_e P_e`` (f: fraction of tokens routed to e, P: mean router probability of e).
    """

    def __init__(self, d_model: int, num_experts: int):
        super().__init__()
        self.router = nn.Linear(d_model, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model))
            for _ in range(num_experts)
        )
        self.aux_loss: Tensor | None = None
        # Expert removal (the pruning method): a removed expert can no longer be chosen.
        self.register_buffer("expert_alive", torch.ones(num_experts, dtype=torch.bool))
        # Tokens routed to each expert in training (the pruning method reads and resets them).
        self.register_buffer("routed_tokens", torch.zeros(num_experts))

    def forward(self, flat: Tensor) -> Tensor:
        logits = self.router(flat)
        if False in self.expert_alive.tolist():  # read on the host: no op for the FLOPs trace
            logits = logits.masked_fill(~self.expert_alive, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        chosen_prob, chosen = probs.max(dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (chosen == e).nonzero(as_tuple=True)[0]
            if rows.numel():
                out.index_add_(0, rows, (expert(flat[rows]) * chosen_prob[rows, None]).to(out.dtype))
        num_experts = len(self.experts)
        if flat.shape[0]:
            counts = torch.bincount(chosen, minlength=num_experts)
            if self.training:
                self.routed_tokens += counts.detach().to(self.routed_tokens.dtype)
            fraction = counts.to(probs.dtype) / chosen.numel()
            self.aux_loss = num_experts * (fraction * probs.mean(dim=0)).sum()
        else:
            self.aux_loss = probs.new_zeros(())
        return out


class BKMixer(nn.Module):
    """The BK-Core mixer: ``channels`` independent tridiagonal systems driven by the block's input."""

    def __init__(self, d_model: int, channels: int, mode: str, potential_limit: float, grad: str = "exact",
                 sparse: bool = False, sparse_target: float = 0.5, spectral: bool = False,
                 eta_min: float = 1e-3, eta_max: float = 1.0):
        super().__init__()
        self.mode = mode
        self.potential_limit = potential_limit
        self.grad = grad
        self.v_proj = nn.Linear(d_model, channels)
        self.output_proj = nn.Linear(2 * channels, d_model)
        self.bk_scale = nn.Parameter(torch.ones(()))
        # Spectral parameters: z = E + i*eta per channel (see the module's doc); None: z = i.
        self.energy = self.log_eta = None
        if spectral:
            self.energy = nn.Parameter(torch.zeros(channels))
            self.log_eta = nn.Parameter(torch.linspace(math.log(eta_min), math.log(eta_max), channels))
        # Sparse BK-Core: a gate from each position's own state; 1 = compute, 0 = skip.
        self.gate = nn.Linear(d_model, 1) if sparse else None
        self.sparse_target = sparse_target
        self.sparsity_loss: Tensor | None = None
        self._kept_fraction: Tensor | None = None  # a tensor: no device sync in the forward

    @property
    def realised_sparsity(self) -> float | None:
        """Fraction of positions gated off in the last forward."""
        return None if self._kept_fraction is None else 1.0 - float(self._kept_fraction)

    def spectral_z(self) -> Tensor | complex:
        """The shift ``z``: ``(channels,)`` complex with spectral parameters, else ``1j``."""
        if self.energy is None:
            return 1j
        eta = self.log_eta.exp().clamp(min=ETA_FLOOR)
        return torch.complex(self.energy, eta)

    def _potential(self, h: Tensor) -> Tensor:
        # A soft clamp (tanh) bounds the potential yet keeps its gradient everywhere.
        return self.potential_limit * torch.tanh(self.v_proj(h) / self.potential_limit)

    def forward(self, h: Tensor, active: Optional[Tensor] = None) -> Tensor:
        """``h (B, N, d)`` -> the mixer's output ``(B, N, d)``, zero where not ``active`` or gated off."""
        b, n, d = h.shape
        flat = h.reshape(b * n, d)
        read = active  # positions whose output is used
        if self.gate is None:
            v = self._potential(flat)
            keep_st = None
        else:
            prob = torch.sigmoid(self.gate(flat).float()).squeeze(-1)
            keep = prob > 0.5
            # Straight-through: the forward uses the hard 0/1 gate, the backward the sigmoid's gradient.
            keep_st = keep.to(prob.dtype) + prob - prob.detach()
            kept = keep.nonzero(as_tuple=True)[0]
            v_kept = self._potential(flat[kept]) * keep_st[kept, None].to(flat.dtype)
            v = scatter_rows(kept, v_kept, b * n, flat)
            self.sparsity_loss = (prob.mean() - (1.0 - self.sparse_target)) ** 2
            self._kept_fraction = keep.float().mean().detach()
            read = keep if read is None else read & keep
        diag = (LAPLACIAN_DIAG + v.view(b, n, -1)).transpose(1, 2)  # (B, C, N)
        if diag.dtype in (torch.float16, torch.bfloat16):  # under autocast the BK-Core stays float32
            diag = diag.float()
        upper = torch.full((n - 1,), LAPLACIAN_OFF, device=h.device, dtype=diag.dtype)
        mask = None if read is None else read.view(b, 1, n).expand_as(diag)
        g = bk_core(diag, upper, None, self.spectral_z(), mode=self.mode, grad=self.grad, backend="auto", mask=mask)
        features = torch.cat([g.real, g.imag], dim=1).transpose(1, 2).reshape(b * n, -1).to(h.dtype)  # (BN, 2C)
        if read is None:
            return (self.bk_scale * self.output_proj(features)).view(b, n, d)
        rows = read.nonzero(as_tuple=True)[0]
        out_rows = self.bk_scale * self.output_proj(features[rows])
        if keep_st is not None:
            out_rows = out_rows * keep_st[rows, None].to(out_rows.dtype)
        return scatter_rows(rows, out_rows, b * n, flat).view(b, n, d)


class ResNetBKBlock(nn.Module):
    """``x + dropout(f + bk(f))`` with ``f = moe(norm(x))``: the residual branch is dropped out as
    the Transformer drops each of its branches (the same regularisation where the parts match)."""

    def __init__(self, d_model: int, num_experts: int, dropout: float, channels: int, mode: str,
                 potential_limit: float, grad: str = "exact", sparse: bool = False, sparse_target: float = 0.5,
                 spectral: bool = False, eta_min: float = 1e-3, eta_max: float = 1.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.moe = MoEFeedForward(d_model, num_experts)
        self.bk = BKMixer(d_model, channels, mode, potential_limit, grad, sparse, sparse_target, spectral, eta_min,
                          eta_max)
        self.resid_dropout = nn.Dropout(dropout)

    @property
    def aux_loss(self) -> Tensor | None:
        return self.moe.aux_loss

    def forward(self, x: Tensor, active: Optional[Tensor] = None) -> Tensor:
        if active is None:
            ffn_out = self.moe(self.norm(x).reshape(-1, x.shape[-1])).view_as(x)
            return x + self.resid_dropout(ffn_out + self.bk(ffn_out))
        # Only the active rows are normalised and run through the experts; the others get 0.
        b, n, d = x.shape
        flat = x.reshape(b * n, d)
        rows = active.nonzero(as_tuple=True)[0]
        ffn_rows = self.moe(self.norm(flat[rows]))
        ffn_out = scatter_rows(rows, ffn_rows, b * n, flat).view(b, n, d)
        return x + self.resid_dropout(ffn_out + self.bk(ffn_out, active))
