"""ResNet-BK: residual blocks whose only sequence mixer is the BK-Core.

Each block: LayerNorm -> mixture-of-experts feed-forward -> potential ``v = v_proj(ffn_out)``
-> ``H = H0 + diag(v)`` (H0 the discrete Laplacian: -2 on the diagonal, 1 beside it) ->
``G = bk_core(H, z = i)`` -> ``(Re G, Im G)`` -> ``output_proj`` scaled by a learnable
``bk_scale``, added to the feed-forward output; the sum is the block's residual update.

Extension points for the optimization methods (``resnetbk.methods``), which set them when they
attach:

* ``active`` (a bool per position, or None, passed to a block): only active positions get the
  feed-forward work and an update (the rows are gathered, computed and scattered back); the
  others keep their state, and the BK-Core recursion still runs over the complete sequence.
  This is how halted (ACT) or exited (early exit) tokens really skip later blocks.
* ``BKMixer.gate``: a module ``gate(rows) -> (keep, keep_st)`` (a bool per position and its
  straight-through weight); gated-off positions get potential 0, skip the potential projection
  and the read-out, and the BK-Core skips their read-out (sparse BK-Core).
* ``BKMixer.shift``: a module ``shift() -> z`` per channel instead of the fixed ``z = i``
  (spectral z).

The mixer's own variants (``models.bk_variants``, chosen by ``ModelOptions.bk_coupling``,
``bk_readout`` and ``bk_write``): input-dependent couplings instead of the Laplacian's 1,
read-outs that the query multiplies, after the projection ("gated") or per channel before it
("selective"), and a write that binds a value to a key (an outer product, "outer").
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import bk_core
from .bk_variants import REAL_AXIS_ETA, OuterWrite, QueryGate, SelectiveCoupling
from .dropout import Dropout
from .options import BK_COUPLINGS, BK_READOUTS, BK_WRITES, REAL_COUPLINGS

#: The Laplacian's diagonal and off-diagonal entries (H0).
LAPLACIAN_DIAG, LAPLACIAN_OFF = -2.0, 1.0


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

    aux_loss_name = "load_balance"

    def __init__(self, d_model: int, num_experts: int):
        super().__init__()
        self.router = nn.Linear(d_model, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.ReLU(), nn.Linear(2 * d_model, d_model))
            for _ in range(num_experts)
        )
        self.aux_loss: Tensor | None = None

    def forward(self, flat: Tensor) -> Tensor:
        logits = self.router(flat)  # (a method may hook the router: pruning masks removed experts)
        probs = F.softmax(logits, dim=-1)
        chosen_prob, chosen = probs.max(dim=-1)
        num_experts = len(self.experts)
        if not flat.shape[0]:
            self.aux_loss = probs.new_zeros(())
            return torch.zeros_like(flat)
        counts = torch.bincount(chosen, minlength=num_experts)
        # The rows grouped by expert (a stable sort: each expert's rows keep their order, so its
        # product is the same as on those rows gathered alone), one product per expert on its
        # slice, then back in place. Both moves, and their backwards, are row gathers: torch's
        # CPU scatter-add behind a gather's backward took ~0.7 ms of a 5.8 ms layer.
        order = torch.argsort(chosen, stable=True)
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
        grouped = permute_rows(flat, order, inverse)
        sizes = counts.tolist()  # the one host sync: the experts' row counts
        outputs = [expert(rows) for expert, rows in zip(self.experts, grouped.split(sizes)) if rows.shape[0]]
        weighted = torch.cat(outputs) * permute_rows(chosen_prob, order, inverse)[:, None]
        fraction = counts.to(probs.dtype) / chosen.numel()
        self.aux_loss = num_experts * (fraction * probs.mean(dim=0)).sum()
        return permute_rows(weighted.to(flat.dtype), inverse, order)


def permute_rows(x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
    """``x[order]`` for a permutation ``order`` of ``x``'s rows (``inverse`` its inverse), whose
    backward is the gather ``grad[inverse]`` rather than a scatter-add into zeros."""
    return _PermuteRows.apply(x, order, inverse)


class _PermuteRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse, order)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        inverse, order = ctx.saved_tensors
        return permute_rows(grad, inverse, order), None, None


class BKMixer(nn.Module):
    """The BK-Core mixer: ``channels`` independent tridiagonal systems driven by the block's input."""

    def __init__(self, d_model: int, channels: int, *, mode: str = "causal", potential_limit: float = 3.0,
                 grad: str = "exact", coupling: str = "fixed", coupling_max: float = 32.0, readout: str = "complex",
                 write: str = "linear", write_keys: int = 8):
        super().__init__()
        for name, value, allowed in (("coupling", coupling, BK_COUPLINGS), ("readout", readout, BK_READOUTS),
                                     ("write", write, BK_WRITES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        self.channels = channels
        self.mode = mode
        self.potential_limit = potential_limit
        self.grad = grad
        self.v_proj = nn.Linear(d_model, channels) if write == "linear" else None
        self.outer_write = OuterWrite(d_model, channels, write_keys) if write == "outer" else None
        self.output_proj = nn.Linear(2 * channels, d_model)
        self.bk_scale = nn.Parameter(torch.ones(()))
        self.real = coupling in REAL_COUPLINGS  # the resolvent below the spectrum (models.bk_variants)
        self.tied_write = coupling == "selective_real_tied"  # each write scaled by what its position forgets
        self.coupling = (SelectiveCoupling(d_model, channels, coupling_max, real=self.real)
                         if coupling != "fixed" else None)
        self.query_gate = QueryGate(d_model, d_model) if readout == "gated" else None  # after the projection
        self.read_gate = QueryGate(d_model, 2 * channels) if readout == "selective" else None  # per channel, before it
        # Extension points (see the module's doc): None = every position, z = i.
        self.gate: Optional[nn.Module] = None
        self.shift: Optional[nn.Module] = None

    def spectral_z(self) -> Tensor | complex:
        """The shift ``z``: ``shift()`` (``(channels,)`` complex) where one is attached, else ``1j``
        (just above the real axis for the resolvent below the spectrum)."""
        if self.real:
            if self.shift is not None:
                raise ValueError("spectral z: the resolvent below the spectrum (bk_coupling: selective_real or "
                                 "selective_real_tied) fixes z "
                                 "next to the real axis; a learnt z could reach the spectrum. Leave use_spectral_z off")
            return 1j * REAL_AXIS_ETA * self.coupling.b_max  # scaled as H is
        return 1j if self.shift is None else self.shift()

    def features(self, g: Tensor) -> Tensor:
        """``(B*N, 2C)`` read-out features ``(Re g, Im g)`` of ``g (B, C, N)``; below the spectrum
        ``b_max * g``, in ``(0, 1]`` whatever the scale."""
        if self.real:
            g = g * self.coupling.b_max
        b, c, n = g.shape
        return torch.cat([g.real, g.imag], dim=1).transpose(1, 2).reshape(b * n, 2 * c)

    def diagonal(self, v: Tensor, upper: Tensor) -> Tensor:
        """``H``'s diagonal ``(B, C, N)`` from the potentials ``v (B, N, C)`` and the couplings
        ``upper`` (``self.upper``'s): the Laplacian's plus ``v``, or (below the spectrum)
        ``b_max + b_{k-1}^2 / b_max + |v_k|``, which keeps every ``|g_k| <= 1 / b_max`` (with the
        tied write ``(1 - b_{k-1}^2 / b_max^2) |v_k|``: a position that keeps its past writes nothing)."""
        if not self.real:
            return (LAPLACIAN_DIAG + v).transpose(1, 2)
        b_max = self.coupling.b_max
        into = F.pad(upper.square(), (1, 0)) / b_max  # b_{k-1}^2 / b_max; position 0 has no link in
        write = v.transpose(1, 2).abs()
        if self.tied_write:  # what the position keeps at rest is (b_{k-1} / b_max)^2 = into / b_max, in [0, 1)
            write = (1.0 - into / b_max).clamp_min(0.0) * write  # b = b_max can round 1 - b^2/b_max^2 below 0
        return b_max + into + write

    def _clamp(self, raw: Tensor) -> Tensor:
        # A soft clamp (tanh) bounds the potential yet keeps its gradient everywhere.
        return self.potential_limit * torch.tanh(raw / self.potential_limit)

    def _potential(self, rows: Tensor) -> Tensor:
        """The plain write's potential of some rows ``(T, d)`` (each row alone)."""
        return self._clamp(self.v_proj(rows))

    def potential(self, h: Tensor) -> Tensor:
        """Every position's potential ``(B*N, C)`` of ``h (B, N, d)``."""
        if self.outer_write is not None:  # reads the positions before (its convolution)
            return self._clamp(self.outer_write(h))
        return self._potential(h.reshape(-1, h.shape[-1]))

    def upper(self, flat: Tensor, b: int, n: int, dtype: torch.dtype) -> Tensor:
        """The couplings ``b_j`` between positions j and j+1: the Laplacian's 1 ``(N-1,)``, or
        (selective) ``(B, C, N-1)`` from the input at position j+1 (so site k reads inputs up to k)."""
        if self.coupling is None:
            return torch.full((n - 1,), LAPLACIAN_OFF, device=flat.device, dtype=dtype)
        couplings = self.coupling(flat).view(b, n, -1)  # (B, N, C)
        return couplings[:, 1:, :].transpose(1, 2).to(dtype).contiguous()

    def _read_out(self, features: Tensor, h_rows: Tensor) -> Tensor:
        if self.read_gate is not None:
            features = self.read_gate(features, h_rows)
        out = self.bk_scale * self.output_proj(features)
        return out if self.query_gate is None else self.query_gate(out, h_rows)

    def forward(self, h: Tensor, active: Optional[Tensor] = None) -> Tensor:
        """``h (B, N, d)`` -> the mixer's output ``(B, N, d)``, zero where not ``active`` or gated off."""
        b, n, d = h.shape
        flat = h.reshape(b * n, d)
        read = active  # positions whose output is used
        if self.gate is None:
            v = self.potential(h)
            keep_st = None
        else:
            keep, keep_st = self.gate(flat)
            kept = keep.nonzero(as_tuple=True)[0]
            # The plain write computes the kept rows only; the outer one needs every position (its convolution).
            v_kept = self._potential(flat[kept]) if self.outer_write is None else self.potential(h)[kept]
            v_kept = v_kept * keep_st[kept, None].to(flat.dtype)
            v = scatter_rows(kept, v_kept, b * n, flat)
            read = keep if read is None else read & keep
        v = v.view(b, n, -1)
        if v.dtype in (torch.float16, torch.bfloat16):  # under autocast the BK-Core stays float32
            v = v.float()
        upper = self.upper(flat, b, n, v.dtype)
        diag = self.diagonal(v, upper)  # (B, C, N)
        mask = None if read is None else read.view(b, 1, n).expand_as(diag)
        g = bk_core(diag, upper, None, self.spectral_z(), mode=self.mode, grad=self.grad, backend="auto", mask=mask)
        features = self.features(g).to(h.dtype)  # (BN, 2C)
        if read is None:
            return self._read_out(features, flat).view(b, n, d)
        rows = read.nonzero(as_tuple=True)[0]
        out_rows = self._read_out(features[rows], flat[rows])
        if keep_st is not None:
            out_rows = out_rows * keep_st[rows, None].to(out_rows.dtype)
        return scatter_rows(rows, out_rows, b * n, flat).view(b, n, d)


class ResNetBKBlock(nn.Module):
    """``x + dropout(f + bk(f))`` with ``f = moe(norm(x))``: the residual branch is dropped out as
    the Transformer drops each of its branches (the same regularisation where the parts match)."""

    def __init__(self, d_model: int, *, num_experts: int = 4, dropout: float = 0.1, channels: int = 1,
                 mode: str = "causal", potential_limit: float = 3.0, grad: str = "exact", mixer: bool = True,
                 coupling: str = "fixed", coupling_max: float = 32.0, readout: str = "complex", write: str = "linear",
                 write_keys: int = 8):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.moe = MoEFeedForward(d_model, num_experts)
        # mixer=False: the no_mixer control (ModelOptions.no_mixer), a position-wise block.
        self.bk = BKMixer(d_model, channels, mode=mode, potential_limit=potential_limit, grad=grad, coupling=coupling,
                          coupling_max=coupling_max, readout=readout, write=write, write_keys=write_keys) if mixer else None
        self.resid_dropout = Dropout(dropout)

    @property
    def aux_loss(self) -> Tensor | None:
        return self.moe.aux_loss

    def forward(self, x: Tensor, active: Optional[Tensor] = None) -> Tensor:
        if active is None:
            ffn_out = self.moe(self.norm(x).reshape(-1, x.shape[-1])).view_as(x)
            return x + self.resid_dropout(ffn_out if self.bk is None else ffn_out + self.bk(ffn_out))
        # Only the active rows are normalised and run through the experts; the others get 0.
        b, n, d = x.shape
        flat = x.reshape(b * n, d)
        rows = active.nonzero(as_tuple=True)[0]
        ffn_rows = self.moe(self.norm(flat[rows]))
        ffn_out = scatter_rows(rows, ffn_rows, b * n, flat).view(b, n, d)
        return x + self.resid_dropout(ffn_out if self.bk is None else ffn_out + self.bk(ffn_out, active))
