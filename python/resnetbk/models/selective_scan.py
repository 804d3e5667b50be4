"""Mamba's selective scan as one Rust kernel on a float32 CPU (``step_kernels::selective_scan``).

mambapy's scan (``MambaBlock``'s default) builds ``exp(delta A)``, ``delta B x`` and the states
as ``(batch, L, inner, d_state)`` tensors and runs a parallel scan over them: memory-bound
passes that made a Mamba training step about 60x a ResNet-BK step on these CPUs (4.3 s at batch
64, sequence 128, inner 131, 16 states). The kernel keeps each channel's state in registers, one
batch row per task, and its backward recomputes the states (as mamba-ssm's CUDA kernel does).

``reference_selective_scan`` is the definition, step by step in torch (the slow reference the
tests hold the kernel and mambapy's scan to); ``selective_scan`` runs the kernel where it
applies (float32 CPU tensors, no dispatch mode: the FLOPs tracer prices torch's ops) and
mambapy's own scan otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .. import _native

#: Whether float32 CPU scans run the kernel; False runs mambapy's scan.
use_kernel = True


def kernel_applies(*tensors: Tensor) -> bool:
    return use_kernel and _get_current_dispatch_mode() is None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def reference_selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The definition: ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t``, ``y_t = h_t C_t + D x_t``
    with ``x``, ``delta`` ``(batch, L, inner)``, ``A`` ``(inner, N)``, ``B``, ``C`` ``(batch, L,
    N)``, ``D`` ``(inner)``; ``y`` ``(batch, L, inner)``."""
    batch, length, inner = x.shape
    h = x.new_zeros(batch, inner, A.shape[1])
    ys = []
    for t in range(length):
        d = delta[:, t, :, None]
        h = torch.exp(d * A) * h + d * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1)


def selective_scan(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor) -> Tensor:
    """The scan of ``reference_selective_scan`` through the Rust kernel (float32 CPU tensors)."""
    if not kernel_applies(x, delta, A, B, C, D):
        raise ValueError("selective_scan: the kernel takes float32 CPU tensors outside a dispatch mode; "
                         "use reference_selective_scan or mambapy's scan")
    batch, length, inner = x.shape
    states = A.shape[-1]
    expected = {"delta": (batch, length, inner), "A": (inner, states), "B": (batch, length, states),
                "C": (batch, length, states), "D": (inner,)}
    for name, tensor in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name}: expected shape {expected[name]} (from x {tuple(x.shape)} and A's states), "
                             f"got {tuple(tensor.shape)}")
    return _SelectiveScan.apply(x, delta, A, B, C, D)


def _flat(t: Tensor):
    return t.detach().contiguous().view(-1).numpy()


class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, delta, A, B, C, D):
        inputs = [t.detach().contiguous() for t in (x, delta, A, B, C, D)]
        shape = (*x.shape, A.shape[-1])
        y = inputs[0].new_empty(x.shape)
        _native.selective_scan_forward_f32(*[_flat(t) for t in inputs], y.view(-1).numpy(), *shape,
                                           torch.get_num_threads())
        ctx.save_for_backward(*inputs)
        ctx.shape = shape
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        inputs = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in inputs]
        _native.selective_scan_backward_f32(*[_flat(t) for t in inputs], _flat(grad_y),
                                            tuple(g.view(-1).numpy() for g in grads), *ctx.shape,
                                            torch.get_num_threads())
        return tuple(grads)


def kernel_scan_class(mixer_class: type) -> type:
    """mambapy's ``MambaBlock`` class with its ``selective_scan`` through the kernel where it
    applies (else its own parallel scan): a subclass made once and kept as this module's
    ``KernelScanMambaBlock`` (also made on first access, ``__getattr__``), so that copies and
    pickles of a model keep it, in this process or another."""
    made = globals().get("KernelScanMambaBlock")
    if made is not None and made.__base__ is mixer_class:
        return made

    class KernelScanMambaBlock(mixer_class):
        def selective_scan(self, x, delta, A, B, C, D):
            if kernel_applies(x, delta, A, B, C, D):
                return selective_scan(x, delta, A, B, C, D)
            return super().selective_scan(x, delta, A, B, C, D)

    KernelScanMambaBlock.__qualname__ = "KernelScanMambaBlock"  # found by pickle at module level
    globals()["KernelScanMambaBlock"] = KernelScanMambaBlock
    return KernelScanMambaBlock


def __getattr__(name: str):
    """``KernelScanMambaBlock`` before any Mamba model was built here (unpickling in a fresh process)."""
    if name == "KernelScanMambaBlock":
        from mambapy.mamba import MambaBlock  # the declared dependency, loaded only where Mamba is used

        return kernel_scan_class(MambaBlock)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
