"""The BK-Core's decay law: how much of the past each mixer channel keeps, from its learnt
potentials and its z, beside the loss's measured context reach (``measure.context_reach``).

In causal mode a channel's output at position k is ``g_k = 1 / (a_k - z - kap_{k-1} g_{k-1})``
with ``a_k = -2 + v_k``, ``v_k`` the potential the block computes from its input (the mixer's
``diagonal``: below the spectrum it is ``b_max + b_{k-1}^2 / b_max + |v_k|``), and
``kap_j = b_j^2`` the coupling from position j to j+1 (the Laplacian's 1, or the selective
couplings of ``models.bk_variants``). So ``|dg_k / dg_{k-1}| = kap_{k-1} |g_k|^2`` and
``dg_k / da_k = -g_k^2``: the sensitivity of the output at the last position ``t`` to the
potential ``d`` positions back, relative to ``d = 0``, is the product of the contractions
``c_j = kap_j |g_j|^2`` over ``j = t-d..t-1`` (with unit couplings ``c_j = |g_j|^2``; the last
position, which couples to nothing, counts with ``kap = 1``). For ``v = 0`` and ``z = i``
the contraction is about 1/4.33 per position (the resolvent's exponential decay away from the
spectrum); a potential or a ``z`` near the spectrum decays slower.

The factor itself, ``dg_{k+1} / dg_k = kap_k g_{k+1}^2``, is complex: what a channel keeps of a
write also *turns*, by ``arg(kap_k g_{k+1}^2)`` per position. Inside the band (where a long memory
needs the couplings: ``kap |g|^2`` near 1) that turn is near 180 degrees and depends on the
potentials written in between, so a write arrives at a later read with a sign set by the
distance's parity and a phase set by the tokens between (a reading of why the recall variants
stop at the bag-of-values level, ``docs/recall.md``; the variant built to test it did not bind
either). Only
for a real ``z`` off the spectrum is the resolvent real and the factor a pure, positive decay,
as Mamba's real ``exp(Delta A)`` is (below the spectrum ``G`` is positive as well). ``steady_state_factor`` gives
the factor for constant ``a``, ``kap`` and ``z``; ``_channel_law`` reports each channel's mean turn
per position and its spread.

For validation windows (the context reach's) the potentials are captured from every block's
mixer input, the recursion is run in float64, and per block and channel this reports the mean
``log10 c_k`` over the window's second half (as a decay factor per position: past the start's
transient, where the measured reach is taken) and the predicted relative
sensitivity at each distance from the last position (the mean over windows of the product).
A mixer with a sparse gate is measured without it (the gate's zeroed positions are not modelled);
a bidirectional mixer is not described by the causal recursion and is left out.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import data as wt2

METHOD = ("g_k = 1/(a_k - z - kap_{k-1} g_{k-1}) in float64 from each mixer's learnt potentials (a_k = -2 + v_k; "
          "below the spectrum b_max + b_{k-1}^2/b_max + |v_k|), "
          "couplings (kap = b^2) and z on validation windows; contraction c_k = kap_k |g_k|^2; decay per position = "
          "10^-(mean log10 c_k over positions N/2 .. N-2); predicted relative sensitivity at distance d from the last "
          "position t = mean over windows of prod_{j=t-d..t-1} c_j; turn per position = circular mean (and std) "
          "of arg(kap_k g_{k+1}^2) over positions N/2 .. N-2")


def causal_resolvent_diagonal(diag: torch.Tensor, z, kap: torch.Tensor | None = None) -> torch.Tensor:
    """``g (..., N)`` complex128 from ``diag (..., N)`` (``a_k``), ``z`` (a number or one per
    leading index, broadcast against ``diag[..., 0]``) and the couplings ``kap (..., N-1)`` (None:
    the Laplacian's 1): the causal recursion."""
    a = diag.to(torch.complex128)
    z = torch.as_tensor(z, dtype=torch.complex128)
    g_prev = torch.zeros_like(a[..., 0])
    out = []
    for k in range(a.shape[-1]):
        coupling = 1.0 if kap is None or k == 0 else kap[..., k - 1]
        g_prev = 1.0 / (a[..., k] - z - coupling * g_prev)
        out.append(g_prev)
    return torch.stack(out, dim=-1)


def steady_state_factor(a: complex, kap: float, z: complex) -> complex:
    """``kap g^2``: the factor ``dg_k / dg_{k-1}`` at the fixed point ``g = 1 / (a - z - kap g)``
    that the causal recursion reaches for constant ``a``, ``kap > 0`` and ``z`` off the spectrum
    (the root of ``kap g^2 - (a - z) g + 1 = 0`` the recursion attracts: ``|kap g^2| < 1``).
    Its modulus is what a channel keeps per position, its argument how far the kept part turns."""
    import cmath

    if not kap > 0:
        raise ValueError(f"kap: expected a positive coupling, got {kap!r}")
    w = complex(a) - complex(z)
    root = cmath.sqrt(w * w - 4.0 * kap)
    factors = [kap * g * g for g in ((w + root) / (2.0 * kap), (w - root) / (2.0 * kap))]
    return min(factors, key=abs)


@torch.no_grad()
def decay_law(model, tokens: torch.Tensor, n_seq: int, *, sequences: int = 32, batch: int = 8, device=None,
              context=nullcontext) -> dict | None:
    """``{"blocks": [...], "distances", "sequences", "method"}`` for a ResNet-BK ``model`` on the
    first full windows of ``tokens``; None for a model without BK-Core mixers or without a window."""
    mixers = [getattr(block, "bk", None) for block in model.blocks]
    mixers = [m if m is not None and m.mode == "causal" else None for m in mixers]
    if not any(m is not None for m in mixers) or tokens.numel() - 1 < n_seq:
        return None
    device = device or torch.device("cpu")
    batch = max(1, min(batch, (tokens.numel() - 1) // n_seq))
    captured: dict = {i: [] for i, m in enumerate(mixers) if m is not None}
    hooks = [m.register_forward_hook(lambda module, args, out, i=i: captured[i].append(args[0].detach()))
             for i, m in enumerate(mixers) if m is not None]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        inputs, _ = wt2.streams(tokens, batch)
        for x, _ in wt2.windows(inputs, inputs, n_seq):
            if x.shape[1] < n_seq or seen >= sequences:
                break
            with context():
                model.features(x.contiguous().to(device))
            seen += x.shape[0]
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    blocks = []
    for i, inputs_seen in captured.items():
        blocks.append({"block": i, **_channel_law(mixers[i], torch.cat(inputs_seen)[:seen])})
    return {"blocks": blocks, "distances": list(range(n_seq)), "sequences": seen, "method": METHOD}


def _channel_law(mixer, h: torch.Tensor) -> dict:
    """One mixer's contraction per channel from its inputs ``h (S, N, d)``."""
    s, n, d = h.shape
    flat = h.reshape(s * n, d).float()
    v = mixer.potential(h.float()).view(s, n, -1).double()  # (S, N, C)
    upper = mixer.upper(flat, s, n, torch.float64).expand(s, v.shape[-1], n - 1)  # (S, C, N-1)
    kap = upper.square()
    z = mixer.spectral_z()
    z = z.detach().to(torch.complex128) if isinstance(z, torch.Tensor) else z  # (C,) or a number
    g = causal_resolvent_diagonal(mixer.diagonal(v, upper), z, kap)  # (S, C, N)
    contraction = g.abs().square() * torch.nn.functional.pad(kap, (0, 1), value=1.0)
    log_c = contraction.log10()
    # The summaries per position: the window's second half before its last position (what the
    # products from the end use), past the start's transient (with couplings b it lasts ~b positions).
    steady = log_c[..., n // 2: n - 1] if n > 2 else log_c
    # Relative to d = 0: the product over positions t-d .. t-1, for every d (d = 0: 1).
    cumulative = torch.cat([torch.zeros_like(log_c[..., :1]), log_c[..., :-1].flip(-1).cumsum(-1)], dim=-1)
    predicted = (10.0 ** cumulative).mean(0)  # (C, N): mean over windows
    # The turn per position, arg(kap_k g_{k+1}^2), over the steady half: its circular mean and spread.
    turn = (kap * g[..., 1:].square())[..., n // 2: n - 1] if n > 2 else kap * g[..., 1:].square()
    unit = (turn / turn.abs().clamp_min(1e-300)).mean(dim=(0, 2))  # (C,): the mean unit vector
    mean_turn = torch.rad2deg(unit.angle())
    spread = torch.rad2deg(torch.sqrt(-2.0 * unit.abs().clamp(1e-12, 1.0).log()).abs())  # circular std (never -0)
    z_list = [[complex(zz).real, complex(zz).imag] for zz in (z.flatten().tolist() if isinstance(z, torch.Tensor)
                                                             else [z] * v.shape[-1])]
    return {"z": z_list, "decay_per_position": (10.0 ** -steady.mean(dim=(0, 2))).tolist(),
            "mean_contraction": (10.0 ** steady).mean(dim=(0, 2)).tolist(),
            "predicted_relative": predicted.tolist(), "turn_per_position_deg": mean_turn.tolist(),
            "turn_spread_deg": spread.tolist()}
