"""The LM head and its loss, fused: a linear layer over the vocabulary whose cross-entropy is
computed a block of rows at a time, so that the full ``(rows, vocab)`` logits never exist.

At the benchmark's sizes the head is most of a step (4,096 rows x 33,278 words: 545 MB of
float32 logits, as much again for the softmax and for its gradient). Here each block's logits
live only while the block is processed, and the gradients for the hidden states and the weight
are computed in the same pass (the idea of Liger-Kernel's fused linear cross-entropy and of Cut
Cross-Entropy, Wijmans et al. 2024). Per block of rows ``h`` (targets ``y``)::

    logits = h W^T + b                      p = softmax(logits)
    nll    = logsumexp(logits) - logits[y]  dlogits = p - onehot(y)   (zero on ignored rows)
    dh     = dlogits W                      dW += dlogits^T h,  db += sum(dlogits)

The gradients are kept and scaled by the incoming gradient in ``backward``. The FLOPs tracer
prices the gradient matmuls as backward work (they are the backward's, done early), so a traced
step costs what the unfused head costs.

The slow reference is the plain path: ``F.cross_entropy(F.linear(h, W, b).float(), y)``
(``reference_linear_cross_entropy``); the tests hold this one to it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from ..attribution import THE_MODULE, priced_as

IGNORE_INDEX = -100

#: Rows per block are chosen so that one block of float32 logits is about this size: small
#: enough to stay in the CPU's last-level cache, large enough that the weight gradient's
#: accumulation (vocab x d per block) is a small share of the work. Measured in
#: ``benches/test_train_step.py``.
BLOCK_BYTES = 8 * 2**20


def block_rows(vocab_size: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block: a multiple of 32 (reductions over the vocabulary of a (V, rows) block
    vectorise along rows only for such widths: 10-20x slower at 48 or 63 rows)."""
    return max(32, block_bytes // (4 * vocab_size) // 32 * 32)


class LMHead(nn.Linear):
    """``nn.Linear(d_model, vocab)``; called with ``targets`` it returns the summed NLL instead of
    the logits (ignored targets contribute nothing)."""

    def forward(self, hidden: Tensor, targets: Optional[Tensor] = None, *,
                ignore_index: int = IGNORE_INDEX) -> Tensor:
        if targets is None:
            return super().forward(hidden)
        return linear_cross_entropy(hidden, self.weight, targets, self.bias, ignore_index=ignore_index)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor] = None, *,
                         ignore_index: int = IGNORE_INDEX, reduction: str = "sum",
                         rows_per_block: Optional[int] = None) -> Tensor:
    """``F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, ...)`` (float64 stays float64)
    without the full logits. ``hidden (..., d)``, ``weight (V, d)``, ``targets (...)`` token ids.
    Under autocast the matmuls run in the autocast dtype, as ``F.linear`` would; the softmax in
    float32. ``reduction``: ``"sum"`` or ``"mean"`` (over the targets that are not ignored)."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets: expected shape {tuple(hidden.shape[:-1])} (hidden's leading dims), "
                         f"got {tuple(targets.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight: expected (vocab, {hidden.shape[-1]}), got {tuple(weight.shape)}")
    rows = rows_per_block or block_rows(weight.shape[0])
    if not torch.is_grad_enabled():
        # A Function's needs_input_grad ignores grad mode: without this, evaluation under
        # no_grad would compute (and throw away) both gradients, 3x the head's work.
        hidden, weight = hidden.detach(), weight.detach()
        bias = bias.detach() if bias is not None else None
    total = _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, bias, targets.reshape(-1),
                                      ignore_index, rows)
    if reduction == "mean":
        return total / (targets != ignore_index).sum().clamp_min(1)
    return total


def reference_linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Optional[Tensor] = None, *,
                                   ignore_index: int = IGNORE_INDEX, reduction: str = "sum") -> Tensor:
    """The plain path, full logits and all: what ``linear_cross_entropy`` must equal."""
    logits = _at_least_float32(F.linear(hidden, weight, bias))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index,
                           reduction=reduction)


def _at_least_float32(x: Tensor) -> Tensor:
    """The softmax runs in float32 (float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """What ``F.linear`` would compute in: the autocast dtype when autocast is on for this device."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, rows):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        device = hidden.device
        dtype = _matmul_dtype(device, hidden.dtype)
        # Cast once (autocast would cast the weight again for every block), then compute with
        # autocast off.
        h, w = hidden.to(dtype), weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        acc = torch.float64 if dtype == torch.float64 else torch.float32  # sums and gradients accumulate in this
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=device) if want_b and bias is not None else None
        total = torch.zeros((), dtype=acc, device=device)
        # Priced as the loss, but for the matmuls (the head's own, whatever module runs this).
        with torch.autocast(device.type, enabled=False), priced_as(component="loss"):
            for start in range(0, h.shape[0], rows):
                h_blk, y = h[start:start + rows], targets[start:start + rows]
                valid = y != ignore_index
                safe_y = torch.where(valid, y, 0).unsqueeze(0)
                # Vocabulary-major (V, rows): this product shape runs ~2x faster than (rows, V)
                # on CPU, and the reductions over the vocabulary stay vectorised along rows.
                with priced_as(component=THE_MODULE):
                    logits = torch.mm(w, h_blk.t()) if b is None else torch.addmm(b.unsqueeze(1), w, h_blk.t())
                logits = _at_least_float32(logits)
                target_logit = logits.gather(0, safe_y).squeeze(0)
                peak = logits.amax(0, keepdim=True)
                probs = logits.sub_(peak).exp_()  # in place: the block's only vocab-wide buffer
                norm = probs.sum(0, keepdim=True)
                nll = (peak + norm.log()).squeeze(0) - target_logit
                total += torch.where(valid, nll, 0.0).sum()
                if not (want_h or want_w or want_b):
                    continue
                # (Named for torch.profiler: the backward's work, done here; ``bench step`` reads it.)
                with priced_as(phase="backward"), record_function("lm_head.gradient"):
                    # dlogits = softmax - onehot(target), zero on ignored rows: one pass.
                    probs.mul_(valid / norm)
                    probs.scatter_add_(0, safe_y, -valid.to(probs.dtype).unsqueeze(0))
                    if grad_b is not None:
                        grad_b += probs.sum(1)
                    dlogits = probs.to(dtype)
                    with priced_as(component=THE_MODULE):
                        if want_h:
                            grad_h[start:start + rows] = dlogits.t() @ w
                        if want_w and dtype == acc:
                            grad_w.addmm_(dlogits, h_blk)
                        elif want_w:  # accumulated in float32 across blocks
                            grad_w.add_(dlogits @ h_blk)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_total
        with priced_as(component="loss"):
            dh = (grad_h * scale).to(grad_h.dtype) if grad_h is not None else None
            dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
            db = (grad_b * scale).to(ctx.bias_dtype) if grad_b is not None else None
        return dh, dw, db, None, None, None
