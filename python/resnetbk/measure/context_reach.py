"""How far back a language model looks: the loss's sensitivity to inputs ``d`` positions back.

For validation windows of ``n`` tokens, the loss at the last position ``t = n - 1`` is
differentiated with respect to the embedded inputs (token plus position embedding, the blocks'
input) at every position ``t - d``; the sensitivity at distance ``d`` is the norm of that
gradient, averaged over the sequences. ``relative`` divides by the sensitivity at ``d = 0`` (the
current token), so models of different scales compare. One backward per batch gives every
distance at once. A model that ignores context has ``relative`` near 0 beyond a few positions; a
Transformer's stays near 1e-2 far back (issue 11's measurements).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import data as wt2

METHOD = ("norm of d(loss at the window's last position) / d(embedded input at distance d), averaged over "
          "validation sequences; relative: divided by the value at d = 0")


def context_reach(model, tokens: torch.Tensor, n_seq: int, *, sequences: int = 32, batch: int = 8,
                  device=None, context=nullcontext) -> dict | None:
    """``{"distances", "gradient_norm", "relative", "sequences", "position", "method"}`` for
    ``model`` (a ``LanguageModel``) on the first full windows of ``tokens``; None when ``tokens``
    holds less than one window."""
    device = device or torch.device("cpu")
    if tokens.numel() - 1 < n_seq:
        return None  # not one full window: nothing to measure
    batch = max(1, min(batch, (tokens.numel() - 1) // n_seq))  # every stream holds a full window
    was_training = model.training
    model.eval()
    inputs, targets = wt2.streams(tokens, batch)
    t = n_seq - 1
    total = torch.zeros(n_seq, dtype=torch.float64)
    seen = 0
    captured = {}
    # The blocks' input: the output of the input dropout (the identity in evaluation mode).
    handle = model.dropout.register_forward_hook(lambda module, args, out: captured.__setitem__("x", out))
    try:
        with torch.enable_grad():
            for x, y in wt2.windows(inputs, targets, n_seq):
                if x.shape[1] < n_seq or seen >= sequences:
                    break
                only_last = torch.full_like(y, wt2.IGNORE_INDEX)
                only_last[:, t] = y[:, t]
                with context():
                    nll_sum, _ = model(x.contiguous().to(device), only_last.to(device))
                (grad,) = torch.autograd.grad(nll_sum, captured["x"])
                norms = grad.float().norm(dim=-1)[:, : t + 1].flip(-1)  # column d: position t - d
                total += norms.double().sum(0).cpu()
                seen += x.shape[0]
    finally:
        handle.remove()
        model.train(was_training)
    mean = (total / seen).tolist()
    base = mean[0] if mean[0] > 0 else float("nan")
    return {"distances": list(range(n_seq)), "gradient_norm": mean, "relative": [v / base for v in mean],
            "sequences": seen, "position": t, "method": METHOD}


def shown_distances(n_seq: int) -> list:
    """The distances the report shows: 1, 2, 4, ... and n_seq - 1."""
    out, d = [], 1
    while d < n_seq:
        out.append(d)
        d *= 2
    if n_seq - 1 not in out and n_seq > 1:
        out.append(n_seq - 1)
    return out
