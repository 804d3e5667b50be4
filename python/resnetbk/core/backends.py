"""The BK-Core backends behind one interface: one signature, one registry, one place that picks.

A backend computes the resolvent diagonal and its exact vector-Jacobian product for inputs that
already share one batch shape (``api.bk_core`` validates and broadcasts):

    forward(diag, upper, lower, z, mode, mask) -> G
    backward(grad, diag, upper, lower, z, mode, mask) -> (grad_diag, grad_upper, grad_lower or None, grad_z)

``mask`` (bool, ``diag.shape``, or None) marks the positions whose output is read; the others
return 0. The recursion still passes through every position (a masked position's potential
still shapes every later output), so a mask can only skip the *read-out*: in bidirectional mode
the per-site combination of the two one-sided ratios; in causal mode the read-out is the
recursion state itself and there is nothing to skip. The Rust kernels apply the mask as a
select right after they scatter outputs and gather upstream gradients, but cannot skip
arithmetic either: their rows run 16 at a time in SIMD lock-step. The gradients stay exact for the masked function
(upstream gradients at masked positions are ignored).

To add a backend: write a class with ``name``, ``devices``, ``forward`` and ``backward``, add it
to ``REGISTRY`` and, if it should be picked by default, to ``choose`` (as ``"triton"`` is on CUDA).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch
from torch import Tensor

from . import rust_backend, torch_backend


def couplings(upper: Tensor, lower: Optional[Tensor]) -> Tensor:
    """``kap_k = b_k c_k``: the resolvent diagonal sees the off-diagonals only through it."""
    return upper * upper if lower is None else upper * lower


def _masked_grad(grad: Tensor, mask: Optional[Tensor]) -> Tensor:
    return grad if mask is None else grad.masked_fill(~mask, 0)


class RustBackend:
    """The Rust kernels (``resnetbk._native``), CPU tensors, zero-copy."""

    name = "rust"
    devices = ("cpu",)

    def forward(self, diag, upper, lower, z, mode, mask=None) -> Tensor:
        return rust_backend.forward(diag, upper, lower, z, mode, mask)  # the mask is applied as outputs are written

    def backward(self, grad, diag, upper, lower, z, mode, mask=None):
        return rust_backend.backward(grad, diag, upper, lower, z, mode, mask)


class TorchBackend:
    """Pure torch on any device (the CUDA path): sequential sweeps, parallel scans, or either by size."""

    devices = None  # any

    def __init__(self, name: str, method: str):
        self.name, self.method = name, method

    def forward(self, diag, upper, lower, z, mode, mask=None) -> Tensor:
        kap = couplings(upper, lower)
        if mask is None or mode == "causal":
            out = torch_backend.forward(diag, kap, z, mode, self.method)
            return out if mask is None else out.masked_fill(~mask, 0)
        return torch_backend.forward_masked_bidirectional(diag, kap, z, mask, self.method)

    def backward(self, grad, diag, upper, lower, z, mode, mask=None):
        grad_diag, grad_kap, grad_z = torch_backend.backward(
            _masked_grad(grad, mask), diag, couplings(upper, lower), z, mode, self.method
        )
        if lower is None:  # kap = b^2
            return grad_diag, 2 * upper * grad_kap, None, grad_z
        return grad_diag, grad_kap * lower, grad_kap * upper, grad_z


class TritonBackend(TorchBackend):
    """The torch backend's algorithm with its two sequential primitives as Triton kernels
    (``triton_kernels``): CUDA tensors, or CPU tensors in Triton's interpreter (TRITON_INTERPRET=1)."""

    def __init__(self):
        super().__init__("triton", "triton")

    @property
    def devices(self):
        return ("cpu", "cuda") if triton_interpreted() else ("cuda",)


def triton_available() -> bool:
    """Whether the ``triton`` package imports (it ships with torch's CUDA builds for Linux)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    """Whether the Triton kernels run in Triton's CPU interpreter (decided when they are first imported)."""
    kernels = sys.modules.get(f"{__package__}.triton_kernels")
    if kernels is not None:
        return kernels.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


REGISTRY = {
    b.name: b
    for b in (RustBackend(), TorchBackend("torch", "auto"), TorchBackend("torch_sweep", "sweep"),
              TorchBackend("torch_scan", "scan"), TritonBackend())
}
NAMES = tuple(REGISTRY)


def choose(device: torch.device, grad: str) -> str:
    """The backend ``"auto"`` means: Rust on CPU; Triton on CUDA where triton is installed; torch
    otherwise (and always for autograd, which differentiates the torch implementation)."""
    if grad == "autograd":
        return "torch"
    if device.type == "cpu":
        return "rust"
    return "triton" if device.type == "cuda" and triton_available() else "torch"


def get(name: str, device: torch.device):
    """The registered backend ``name``, checked against ``device``."""
    if name not in REGISTRY:
        raise ValueError(f"backend: expected one of {NAMES}, got {name!r}")
    backend = REGISTRY[name]
    if name == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (it ships with torch's CUDA builds for Linux; "
                         "`pip install triton`), or use backend='torch'")
    if backend.devices is not None and device.type not in backend.devices:
        hint = " (or set TRITON_INTERPRET=1 before the first use to run the kernels in Triton's CPU interpreter)" \
            if name == "triton" else ""
        raise ValueError(f"backend={name!r} runs on {'/'.join(d.upper() for d in backend.devices)} tensors only, got tensors on "
                         f"{device}; use backend='torch' or 'auto'{hint}")
    return backend
