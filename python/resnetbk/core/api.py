"""``resnetbk.bk_core``: argument checking, broadcasting and backend choice in front of the ops."""

from __future__ import annotations

import numbers
from typing import Optional, Union

import torch
from torch import Tensor

from . import backends, ops, torch_backend
from .hybrid import HybridBKCore

MODES = ("causal", "bidirectional")
BACKENDS = ("auto",) + backends.NAMES
GRADS = ("exact", "hybrid", "autograd")
REAL_DTYPES = (torch.float32, torch.float64)
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


def _check_real(name: str, t, n_expected: Optional[int], dtype: Optional[torch.dtype]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in REAL_DTYPES:
        raise TypeError(
            f"{name}: expected a real float32 or float64 tensor, got {t.dtype}; "
            "cast it with .float() or .double() (H must be real)"
        )
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} to match diag, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"{name}: expected at least one dimension (..., N), got a 0-d tensor")
    if n_expected is not None and t.shape[-1] != n_expected:
        raise ValueError(
            f"{name}: expected last dimension N-1 = {n_expected} for diag of length N = {n_expected + 1}, "
            f"got shape {tuple(t.shape)}"
        )


def _broadcast_batch(name: str, t: Tensor, batch: torch.Size, trailing: tuple) -> Tensor:
    target = batch + trailing
    if t.shape == target:  # the common case, without torch's slower general check
        return t
    try:
        if torch.broadcast_shapes(t.shape, target) != target:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"{name}: shape {tuple(t.shape)} does not broadcast to {tuple(target)} "
            f"(diag's batch shape {tuple(batch)} plus {trailing})"
        ) from None
    return t.expand(target)


def _as_z_tensor(z, diag: Tensor) -> Tensor:
    complex_dtype = _COMPLEX_OF[diag.dtype]
    batch = diag.shape[:-1]
    if isinstance(z, Tensor):
        if z.dtype == torch.bool or not (z.is_floating_point() or z.is_complex()):
            raise TypeError(f"z: expected a complex (or float) tensor or a Python number, got dtype {z.dtype}")
        if z.device != diag.device:
            raise ValueError(f"z: expected a tensor on {diag.device} like diag, got {z.device}; move it with .to()")
        # A real tensor has Im z = 0 everywhere. (One device sync on CUDA: correctness first.)
        if not z.is_complex() or (not torch.compiler.is_compiling() and not bool((z.imag > 0).all())):
            raise ValueError("z: every value needs Im z > 0 (the resolvent is taken off the real axis); got Im z <= 0 or NaN")
        return _broadcast_batch("z", z.to(complex_dtype), batch, ())
    if isinstance(z, numbers.Number) and not isinstance(z, bool):
        if not complex(z).imag > 0:
            raise ValueError(f"z: expected Im z > 0 (the resolvent is taken off the real axis), got {z!r}")
        return torch.full(batch, complex(z), dtype=complex_dtype, device=diag.device)
    raise TypeError(f"z: expected a complex number or tensor, got {type(z).__name__}")


def bk_core(
    diag: Tensor,
    upper: Tensor,
    lower: Optional[Tensor] = None,
    z: Union[complex, Tensor] = 1j,
    *,
    mode: str = "causal",
    backend: str = "auto",
    grad: str = "exact",
    hybrid_blend: Optional[float] = None,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Diagonal of the resolvent of the tridiagonal ``H`` (diag ``a``, upper ``b``, lower ``c``).

    Args:
        diag: real ``(..., N)``, float32 or float64, ``N >= 1``.
        upper: real ``(..., N-1)``, broadcastable to diag's batch shape.
        lower: like ``upper``; ``None`` means ``H`` is symmetric (``lower = upper``).
        z: complex shift with ``Im z > 0``: a number or a tensor broadcastable to ``diag.shape[:-1]``.
        mode: ``"causal"`` (site k sees positions ``<= k`` only: the resolvent of the leading
            ``(k+1)`` block) or ``"bidirectional"`` (the full window's resolvent; reads the future).
        backend: ``"rust"`` (CPU), ``"torch"`` (any device; sweep or parallel scan chosen by
            size and device), ``"triton"`` (CUDA: Triton kernels; CPU only in Triton's interpreter),
            ``"auto"`` (rust on CPU, triton on CUDA where installed, torch elsewhere);
            ``"torch_sweep"``/``"torch_scan"`` force the torch algorithm.
        grad: ``"exact"`` (the O(N) vector-Jacobian product for diag, upper, lower and z),
            ``"autograd"`` (autograd through the pure-torch implementation; the baseline), or
            ``"hybrid"`` (the original benchmark's approximation for diag only; NOT a gradient, see
            ``resnetbk.core.hybrid``).
        hybrid_blend: the hybrid mode's blend weight (default 0.5); only with ``grad="hybrid"``.
        mask: bool tensor broadcastable to ``diag.shape``, or None: positions where it is false
            output 0 and skip the read-out work (the recursion still passes through them; see
            ``resnetbk.core.backends``). With ``grad="autograd"`` the torch output is masked;
            not with ``grad="hybrid"``.

    Returns:
        complex64 for float32 input, complex128 for float64, of shape ``diag.shape``.
    """
    _choice("mode", mode, MODES)
    _choice("backend", backend, BACKENDS)
    _choice("grad", grad, GRADS)
    _check_real("diag", diag, None, None)
    n = diag.shape[-1]
    if n == 0:
        raise ValueError(f"diag: the sequence length N (last dimension) must be at least 1, got shape {tuple(diag.shape)}")
    _check_real("upper", upper, n - 1, diag.dtype)
    if lower is not None:
        _check_real("lower", lower, n - 1, diag.dtype)
    for name, t in (("upper", upper), ("lower", lower)):
        if t is not None and t.device != diag.device:
            raise ValueError(f"{name}: expected a tensor on {diag.device} like diag, got {t.device}; move it with .to()")
    batch = diag.shape[:-1]
    upper = _broadcast_batch("upper", upper, batch, (n - 1,))
    lower = None if lower is None else _broadcast_batch("lower", lower, batch, (n - 1,))
    z = _as_z_tensor(z, diag)

    backend = _resolve_backend(backend, diag.device, grad)
    if mask is not None:
        mask = _check_mask(mask, diag, grad)
    if hybrid_blend is not None and grad != "hybrid":
        raise ValueError(f"hybrid_blend: only meaningful with grad='hybrid', got grad={grad!r}")

    if grad == "autograd":
        if backend in ("rust", "triton"):
            raise ValueError(f"backend={backend!r} has no autograd graph; grad='autograd' needs backend='torch' or 'auto'")
        out = torch_backend.forward(diag, ops.couplings(upper, lower), z, mode, backends.REGISTRY[backend].method)
        return out if mask is None else out.masked_fill(~mask, 0)
    if grad == "hybrid":
        for name, t in (("upper", upper), ("lower", lower), ("z", z)):
            if t is not None and t.requires_grad:
                raise ValueError(
                    f"{name}: grad='hybrid' defines a (non-)gradient for diag only, but {name} requires grad; "
                    "use grad='exact'"
                )
        blend = 0.5 if hybrid_blend is None else float(hybrid_blend)
        return HybridBKCore.apply(diag, upper, lower, z, mode, backend, blend)
    return torch.ops.resnetbk.bk_core(diag, upper, lower, z, mode, backend, mask)


def _resolve_backend(backend: str, device: torch.device, grad: str) -> str:
    """``"auto"`` resolved by the backend registry; a clear error for a backend that cannot run here."""
    if backend == "auto":
        backend = backends.choose(device, grad)
    backends.get(backend, device)
    return backend


def _check_mask(mask, diag: Tensor, grad: str) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor (True where the output is read), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if grad == "hybrid":
        raise ValueError("mask: not supported with grad='hybrid' (an approximation for unmasked outputs); use grad='exact'")
    if mask.device != diag.device:
        raise ValueError(f"mask: expected a tensor on {diag.device} like diag, got {mask.device}; move it with .to()")
    try:
        return mask.expand(diag.shape).contiguous()
    except RuntimeError:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not broadcast to diag's {tuple(diag.shape)}") from None
