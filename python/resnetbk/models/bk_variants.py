"""The BK-Core mixer's variants for remembering (issue 23): input-dependent couplings and a
multiplicative read-out. ``BKMixer`` builds them from ``ModelOptions.bk_coupling`` and
``bk_readout``; the fixed Laplacian couplings and the plain ``(Re G, Im G)`` read-out stay the
default.

**Selective couplings** (``bk_coupling = "selective"``). The causal recursion is
``g_k = 1 / (a_k - z - kap_{k-1} g_{k-1})`` with ``kap_j = b_j^2`` (``H`` symmetric), so one step
keeps ``|dg_k / dg_{k-1}| = kap_{k-1} |g_k|^2`` of the past. With the Laplacian's ``b = 1`` and
``z = i`` that is about 1/4 per position: ResNet-BK forgets. Scaling the couplings is scaling
the shift: with ``H = diag(a) + b L`` (``L`` the unit off-diagonals), ``(H - z)^-1 = (1/b)
(diag(a/b) + L - z/b)^-1``, so a coupling ``b`` acts like a spectral shift of imaginary part
``1/b`` (at the band's centre the best contraction is ``(1 - 1/(2b))^2``, about ``1 - 1/b``
per position: a half-life of about ``b ln 2`` positions), and ``b -> 0`` cuts the chain
(``g_k = 1/(a_k - z)``: the past is forgotten). The price: the potential is divided by ``b``
too, so a position writes into a long-memory channel weakly (``|g| ~ 1/b``, ``dg/da = -g^2 ~
1/b^2``). Making ``b_j`` a function of the input lets each channel decide, per position, how
much of its state to keep: the input-dependent selection of Mamba (Gu and Dao 2023), where the
step size ``Delta`` computed from the token decides between keeping and overwriting the state.
Here ``b_j = b_max * sigmoid(w . h_{j+1} + offset)`` per channel: the link from position j to
j+1 is set by the newer position's input, so the mixer stays causal (site k reads inputs up to
k). ``|G| <= 1 / Im z`` still holds for every ``kap >= 0`` (the imaginary part of every
denominator is at most ``-Im z``), and the BK-Core's exact O(N) backward already covers the
couplings. The offsets start each channel's coupling at values log-spaced over
``[1, b_max / 4]`` (one channel: the Laplacian's 1), as S4 and Mamba spread their initial time
scales.

**Below the spectrum** (``bk_coupling = "selective_real"``). With the couplings large enough to
keep, the factor ``kap_k g_{k+1}^2`` of the recursion is near -1 inside the band: what a channel
keeps turns by about 180 degrees a position, by an angle the potentials in between decide
(``measure.decay_law.steady_state_factor``), so a write reaches a later read with a sign set by
the distance's parity and the tokens between. Below the spectrum (``Re z`` under every
eigenvalue of ``H``) the resolvent is real and positive and the factor a pure decay, as
Mamba's ``exp(Delta A)``. This variant keeps it there causally: the diagonal is
``b_max + b_{k-1}^2 / b_max + |v_k|`` (``v`` the soft-clamped potential; the first position
has no ``b_{k-1}``) and ``z = i * REAL_AXIS_ETA * b_max``, so by induction (in causal mode, the
only one it allows) every denominator's
real part is at least ``b_max`` and ``|g_k| <= 1 / b_max`` at every position, whatever the input
(``|g_{k-1}| <= 1/b_max`` makes ``Re(a_k - kap_{k-1} g_{k-1}) >= b_max``). The mixer reads
``b_max * g``, in ``(0, 1]``. At rest (``v = 0``) a channel keeps ``(b_{k-1} / b_max)^2`` of its
past per position, a decay its token chooses. A write is a magnitude ``|v|`` that raises the
diagonal by ``|v| / b_max`` relative to the rest (a potential under the rest value could reach
the spectrum). It also opens a gap under the band's edge, where the rest sits, and below the edge
what a channel keeps falls as about ``1 - 2 sqrt(gap)`` per position: a channel written at every
position forgets within a few positions, whatever its coupling. Its gradient does not vanish at rest, as a square's would (measured: with
``v^2`` the initial features varied by under 0.1%, and a recall run stayed at chance for five
epochs). ``b_max`` is
only the scale of a write here, and need not exceed 1. ``Im z`` is kept just above 0
(``1e-8 b_max``) only because the BK-Core takes ``z`` off the real axis: a gap of ``eta`` caps
what a channel keeps at about ``1 - sqrt(2 eta)`` per position (``1e-4`` would have capped it
at 0.986, ``1e-8`` at 0.9998), and the turn it leaves is below a hundredth of a degree per
position. The couplings start at retentions ``exp(-1 / tau)`` with time scales ``tau``
log-spaced over ``[1, 1000]`` positions, as Mamba spreads its step sizes.

**The tied write** (``bk_coupling = "selective_real_tied"``): the same resolvent below the
spectrum, with each write scaled by what its position forgets, ``(1 - (b_{k-1} / b_max)^2) |v_k|``
(position 0, with no link in, writes fully). Mamba's discretisation ties the two the same way:
with a scalar ``A``, zero-order hold gives ``h_k = exp(Delta A) h_{k-1} + (1 - exp(Delta A)) / (-A)
B x``, so a step that keeps its state writes little into it, as a GRU's update gate does. Above,
every position writes, and every write opens a gap that forgets; tied, a channel whose token
keeps its past is left at rest, where (to first order in the deviation from the rest ``1 /
b_max``) it keeps exactly ``(b_{k-1} / b_max)^2`` of what it holds. The bound is unchanged (the
write stays non-negative).

**Multiplicative read-out** (``bk_readout = "gated"``): the mixer's output
``output_proj(Re G, Im G)`` is multiplied, feature by feature, by ``1 + W_q h_k`` (the current
position's input): the query meets the state in a product, as attention's ``q . k`` and H3's
and Hyena's output gates make it (Fu et al. 2023, "Hungry Hungry Hippos"; Poli et al. 2023,
"Hyena Hierarchy"). ``W_q`` starts at 0 (whatever the model's initialisation), so the mixer
starts as the plain read-out and learns the product.

**Selective read-out** (``bk_readout = "selective"``): the gate acts on each channel's
``(Re g, Im g)`` *before* the output projection, so the query chooses which channels it reads:
Mamba's input-dependent ``C_t`` (``y_t = C_t . state_t``), where the gated read-out above can
only scale the features the channels were already mixed into.

**Outer-product write** (``bk_write = "outer"``): the channels form a grid of ``channels / keys``
values by ``keys`` keys, and channel ``(i, s)``'s potential is the product ``x_i(u_t) k_s(u_t)``
of a value and a key feature, with ``u = silu(conv(h))`` a causal depthwise convolution of width
4 over the positions. This is the write of Mamba's selective scan (``B_t x_t``: the input times
an input-dependent key, after the same short convolution), of linear attention (``v_t k_t^T``)
and of H3 (a shift, then a product): the state then holds *which value came with which key*, and
the selective read-out's per-channel weights pick a key, as ``C_t`` does. The plain write gives
every channel one linear function of the position's input, so no channel's state depends on a
value *and* the key before it at once: it can hold which values occurred (the bag-of-values level
the recall study measured), not which key they followed. The key's bias starts at 1 (whatever the
model's initialisation), so each key's channels start with the value feature alone (``x_i(u)``).
The potential is still real and soft-clamped, so ``|G| <= 1 / Im z`` holds and the BK-Core's
exact backward is unchanged; the write is autograd's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Where the selective couplings start: log-spaced over [1, b_max / START_FRACTION] across channels.
START_FRACTION = 4.0
#: The outer-product write's causal convolution width (Mamba's d_conv).
SHORT_CONV_WIDTH = 4
#: ``Im z / b_max`` of the resolvent below the spectrum (the BK-Core takes z off the real axis).
REAL_AXIS_ETA = 1e-8
#: The time scales (positions) the real resolvent's couplings start at, log-spaced across channels.
REAL_TIME_SCALES = (1.0, 1000.0)


class SelectiveCoupling(nn.Module):
    """``b (T, C) = b_max * sigmoid(proj(h) + offset)``: each channel's coupling from each row's input."""

    def __init__(self, d_model: int, channels: int, b_max: float, *, real: bool = False):
        super().__init__()
        if real and not b_max > 0.0:
            raise ValueError(f"b_max: expected a positive scale (below the spectrum it scales the resolvent), got {b_max!r}")
        if not real and not b_max > 1.0:
            raise ValueError(f"b_max: expected a coupling bound above 1 (the Laplacian's coupling), got {b_max!r}")
        self.b_max = float(b_max)
        self.real = real  # the resolvent below the spectrum: start at retentions, not at couplings
        self.proj = nn.Linear(d_model, channels, bias=False)
        self.offset = nn.Parameter(self._start_offsets(channels))

    def _start_offsets(self, channels: int) -> Tensor:
        if self.real:  # retention (b / b_max)^2 = exp(-1 / tau)
            tau = torch.logspace(*(math.log10(t) for t in REAL_TIME_SCALES), channels, dtype=torch.float64)
            fraction = torch.exp(-0.5 / tau)
        else:
            start = torch.logspace(0.0, math.log10(self.b_max / START_FRACTION), channels, dtype=torch.float64)
            fraction = start / self.b_max
        return (fraction / (1 - fraction)).log().float()  # the logit of b / b_max

    def reset_parameters_after_init(self) -> None:
        """The model-wide initialisation leaves ``offset`` alone; this restores it where a caller
        re-initialises every parameter (``LanguageModel.init_attached``)."""
        with torch.no_grad():
            self.offset.copy_(self._start_offsets(self.offset.numel()))

    def forward(self, flat: Tensor) -> Tensor:
        return self.b_max * torch.sigmoid(self.proj(flat) + self.offset)


class QueryGate(nn.Module):
    """``x * (1 + W_q h)`` on rows: ``x`` of ``width`` features, ``h`` the position's input."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.proj = nn.Linear(d_model, width)
        self.reset_parameters_after_init()

    def reset_parameters_after_init(self) -> None:
        """A gate of exactly 1 at the start (the model-wide initialisation must not override it)."""
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.zero_()

    def forward(self, out_rows: Tensor, h_rows: Tensor) -> Tensor:
        return out_rows * (1.0 + self.proj(h_rows))


class OuterWrite(nn.Module):
    """Pre-clamp potentials ``(B*N, C)`` of ``h (B, N, d)``: channel ``(i, s)`` (``s`` fastest) gets
    ``x_i(u) * k_s(u)``, ``u = silu(conv(h))``, the convolution causal (position t reads t-3..t)."""

    def __init__(self, d_model: int, channels: int, keys: int):
        super().__init__()
        if keys < 1 or channels % keys:
            raise ValueError(f"bk_write_keys: the outer-product write needs bk_channels ({channels}) to be a multiple "
                             f"of the keys, got {keys!r}; pick a divisor of bk_channels")
        self.conv = nn.Conv1d(d_model, d_model, SHORT_CONV_WIDTH, groups=d_model, padding=SHORT_CONV_WIDTH - 1)
        self.values = nn.Linear(d_model, channels // keys)
        self.keys = nn.Linear(d_model, keys)
        self.reset_parameters_after_init()

    def reset_parameters_after_init(self) -> None:
        """Keys start at 1 (zero weights, bias 1): each key's channels start with the value feature
        alone, and the model-wide initialisation must not undo it."""
        with torch.no_grad():
            self.keys.weight.zero_()
            self.keys.bias.fill_(1.0)

    def forward(self, h: Tensor) -> Tensor:
        b, n, _ = h.shape
        u = F.silu(self.conv(h.transpose(1, 2))[..., :n].transpose(1, 2))  # the right padding's outputs dropped
        return (self.values(u).unsqueeze(-1) * self.keys(u).unsqueeze(-2)).reshape(b * n, -1)
