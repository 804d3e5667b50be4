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
(``reference_linear_cross_entropy``); the tests hold this one to it. Two implementations of the
blocks: torch's ops (any device and dtype) and, for float32 on a CPU, a Rust kernel
(``step_kernels::xent``: the softmax, the loss, the logits' gradient and the bias gradient in two
passes over the block instead of seven) with the products writing into buffers reused across
blocks. Measured at 4,096 rows x 33,278 words, d 64, 2 threads of a Sapphire Rapids VM: the
head's forward+backward 322 ms (32-row blocks, torch's ops, fresh buffers: the landed head) ->
224 ms (128-row blocks, the kernel, reused buffers).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _native
from ..attribution import THE_MODULE, priced_as

IGNORE_INDEX = -100

#: Rows per block are chosen so that one block of float32 logits is at most this size: 192 rows
#: at WikiText-2's 33,278 words (25.6 MB). Larger blocks make the weight gradient's accumulation
#: (vocab x d per block) and the per-block calls a smaller share. Measured on a 2-core Sapphire
#: Rapids VM, 2026-12-01 (head forward+backward alone at 4,096 rows, before the Rust kernel:
#: 32 rows 322 ms, 64 256, 128 224, 256 216, 512 229; whole training steps with the kernel,
#: Transformer / ResNet-BK: 128 rows 341 / 308 ms, 192 325 / 292, 256 318 / 294). 192 keeps a
#: block inside the 32 MB L3 of one Zen 3 complex (not measured there).
BLOCK_BYTES = 26 * 2**20


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
        # Priced as the loss, but for the matmuls (the head's own, whatever module runs this).
        with torch.autocast(device.type, enabled=False), priced_as(component="loss"):
            blocks = _KernelBlocks if _kernel_applies(h, targets) else _TorchBlocks
            total = blocks(h, w, b, targets, ignore_index, rows, grad_h, grad_w, grad_b).run()
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


def _kernel_applies(h: Tensor, targets: Tensor) -> bool:
    """The Rust kernel takes float32 CPU blocks. Under a dispatch mode (the FLOPs tracer,
    FlopCounterMode, fake tensors) the torch ops run instead: the kernel is not a torch op, so a
    mode would not see it; the ops price the same math."""
    return (h.device.type == "cpu" and h.dtype == torch.float32 and targets.dtype == torch.int64
            and _get_current_dispatch_mode() is None and use_kernel)


#: Whether float32 CPU blocks go through the Rust kernel (``resnetbk._native``); False runs the
#: torch ops on them too (the tests hold the two to each other).
use_kernel = True


class _Blocks:
    """The loop over blocks of rows shared by both implementations: per block the logits
    ``(V, rows)`` (vocabulary-major: this product shape runs ~2x faster than ``(rows, V)`` on a
    CPU, and the reductions over the vocabulary stay vectorised along rows), the loss, and the
    gradients' products. Returns the summed NLL."""

    def __init__(self, h, w, b, targets, ignore_index, rows, grad_h, grad_w, grad_b):
        self.h, self.w, self.b, self.targets, self.ignore_index, self.rows = h, w, b, targets, ignore_index, rows
        self.grad_h, self.grad_w, self.grad_b = grad_h, grad_w, grad_b
        self.wants_grad = grad_h is not None or grad_w is not None or grad_b is not None

    def run(self) -> Tensor:
        total = torch.zeros((), dtype=self.grad_dtype(), device=self.h.device)
        for start in range(0, self.h.shape[0], self.rows):
            h_blk, y = self.h[start:start + self.rows], self.targets[start:start + self.rows]
            with priced_as(component=THE_MODULE):
                logits = self.logits(h_blk)
            total += self.loss_and_dlogits(logits, y)
            if not self.wants_grad:
                continue
            # (Named for torch.profiler: the backward's work, done here; ``bench step`` reads it.)
            with priced_as(phase="backward"), record_function("lm_head.gradient"):
                dlogits = self.finish_dlogits(logits, y)
                with priced_as(component=THE_MODULE):
                    if self.grad_h is not None:
                        self.write_grad_h(start, dlogits)
                    if self.grad_w is not None and dlogits.dtype == self.grad_w.dtype:
                        self.grad_w.addmm_(dlogits, h_blk)
                    elif self.grad_w is not None:  # accumulated in float32 across blocks
                        self.grad_w.add_(dlogits @ h_blk)
        return total

    def grad_dtype(self) -> torch.dtype:
        return torch.float64 if self.h.dtype == torch.float64 else torch.float32

    def logits(self, h_blk: Tensor) -> Tensor:
        if self.b is None:
            return torch.mm(self.w, h_blk.t())
        return torch.addmm(self.b.unsqueeze(1), self.w, h_blk.t())

    def write_grad_h(self, start: int, dlogits: Tensor) -> None:
        self.grad_h[start:start + dlogits.shape[1]] = dlogits.t() @ self.w


class _TorchBlocks(_Blocks):
    """torch's ops: any device and dtype (the softmax in float32, float64 stays float64)."""

    def loss_and_dlogits(self, logits: Tensor, y: Tensor) -> Tensor:
        logits = _at_least_float32(logits)
        self.valid = y != self.ignore_index
        self.safe_y = torch.where(self.valid, y, 0).unsqueeze(0)
        target_logit = logits.gather(0, self.safe_y).squeeze(0)
        peak = logits.amax(0, keepdim=True)
        self.probs = logits.sub_(peak).exp_()  # in place: the block's only vocab-wide buffer
        self.norm = self.probs.sum(0, keepdim=True)
        nll = (peak + self.norm.log()).squeeze(0) - target_logit
        return torch.where(self.valid, nll, 0.0).sum()

    def finish_dlogits(self, logits: Tensor, y: Tensor) -> Tensor:
        # dlogits = softmax - onehot(target), zero on ignored rows.
        probs = self.probs
        probs.mul_(self.valid / self.norm)
        probs.scatter_add_(0, self.safe_y, -self.valid.to(probs.dtype).unsqueeze(0))
        if self.grad_b is not None:
            self.grad_b += probs.sum(1)
        return probs.to(self.w.dtype)


class _KernelBlocks(_Blocks):
    """float32 on a CPU: the products write into buffers reused across blocks (fresh
    multi-megabyte buffers cost page faults under glibc's malloc), and one Rust kernel
    (``step_kernels::xent``, two passes over the block on torch's own OpenMP threads) computes
    the loss, the logits' gradient in place and the bias gradient."""

    def __init__(self, *args):
        super().__init__(*args)
        rows = min(self.rows, self.h.shape[0])
        vocab, width = self.w.shape
        self.buffer = torch.empty(vocab * rows, dtype=torch.float32)  # (whatever the default dtype)
        self.grad_h_t = torch.empty(width * rows, dtype=torch.float32) if self.grad_h is not None else None
        self.nll = torch.empty(rows, dtype=torch.float32)
        self.threads = torch.get_num_threads()

    def logits(self, h_blk: Tensor) -> Tensor:
        out = self.buffer[:self.w.shape[0] * h_blk.shape[0]].view(self.w.shape[0], h_blk.shape[0])
        if self.b is None:
            return torch.mm(self.w, h_blk.t(), out=out)
        return torch.addmm(self.b.unsqueeze(1), self.w, h_blk.t(), out=out)

    def loss_and_dlogits(self, logits: Tensor, y: Tensor) -> Tensor:
        nll = self.nll[:y.shape[0]]
        grad_b = self.grad_b.numpy() if self.grad_b is not None and self.wants_grad else None
        _native.softmax_xent_grad_f32(logits.numpy(), y.contiguous().numpy(), self.ignore_index, nll.numpy(),
                                      grad_b, self.wants_grad, self.threads)
        return nll.sum()

    def finish_dlogits(self, logits: Tensor, y: Tensor) -> Tensor:
        return logits  # the kernel has already made it the gradient

    def write_grad_h(self, start: int, dlogits: Tensor) -> None:
        # (d, rows) = W^T dlogits: ~1.2x faster than dlogits^T W; transposed into place.
        n = dlogits.shape[1]
        out = self.grad_h_t[:self.w.shape[1] * n].view(self.w.shape[1], n)
        torch.mm(self.w.t(), dlogits, out=out)
        self.grad_h[start:start + n] = out.t()
