"""Triton kernels for the two sequential primitives of the BK-Core (the ``"triton"`` backend).

Everything the BK-Core does along the sequence is one of two recurrences; the rest is
elementwise and stays in torch (``torch_backend`` composes them exactly as for its own sweeps
and scans):

* the ratio (Moebius) recursion ``x_k = 1/(s_k - kap_{k-1} x_{k-1})``, ``x_{-1} = 0``: the
  one-sided ratios ``gL`` (and ``gR`` on the reversed row);
* the linear recurrence ``x_k = e_k + m_k x_{k-1}``, ``x_{-1} = 0``: every adjoint sweep.

Each runs as one kernel with rows in parallel (one lane per row, the row's positions in a
loop) when there are enough rows to fill the GPU, and otherwise as a chunked scan in three
launches: (A) each chunk of each row summarises itself as one map (a 2x2 complex matrix,
renormalised after every step as in ``scan.left_ratios_scan``, or an affine map ``(E, P)``),
(B) one pass per row over the chunk summaries gives each chunk its incoming value, (C) every
chunk reruns its positions from that value and writes them. (A) and (C) run rows x chunks
programs in parallel; the sequential depth drops from N to about 3 sqrt(N).

Complex numbers are read and written as interleaved (real, imaginary) pairs, i.e.
``torch.view_as_real`` of contiguous complex tensors, without copies. Arithmetic is in the
inputs' precision (float32 for complex64, float64 for complex128).

With ``TRITON_INTERPRET=1`` in the environment when this module is first imported, Triton's
interpreter runs the same kernels on CPU tensors (slowly): that is how the CPU test suite holds
them to the other backends when no GPU is present. (Zeros are written ``(r * 0).to(dtype)``,
not ``tl.zeros``: the interpreter cannot call that library function when triton was imported
before TRITON_INTERPRET was set, as torch may do.)
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

#: True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Rows per program (one lane each): one warp per program (NUM_WARPS).
BLOCK_ROWS = 32
NUM_WARPS = 1
#: With at least this many rows, rows alone fill an H100/H200 (132 SMs x 2048 threads would
#: take more, but each lane's loop is latency-bound): one launch, no chunking. Not yet tuned on a GPU.
ROWS_TO_FILL_GPU = 8192
#: Rows shorter than this are never chunked (the three launches cost more than the loop).
CHUNK_MIN_LENGTH = 256


def chunk_length(rows: int, n: int) -> int:
    """The chunk length the drivers use: ``n`` (no chunking) or about ``sqrt(n)``, a power of two >= 16."""
    if rows >= ROWS_TO_FILL_GPU or n < CHUNK_MIN_LENGTH:
        return n
    return max(16, 1 << math.ceil(math.log2(math.sqrt(n))))


# --- complex numbers as interleaved pairs --------------------------------------------------


@triton.jit
def _load_complex(ptr, index, mask, other_re):
    """The complex number at ``index`` of an interleaved (real, imaginary) array (``other_re`` + 0i where masked)."""
    return tl.load(ptr + index * 2, mask=mask, other=other_re), tl.load(ptr + index * 2 + 1, mask=mask, other=0.0)


@triton.jit
def _store_complex(ptr, index, re, im, mask):
    tl.store(ptr + index * 2, re, mask=mask)
    tl.store(ptr + index * 2 + 1, im, mask=mask)


@triton.jit
def _mul_add(a_re, a_im, x_re, x_im, b_re, b_im):
    """``a x + b`` for complex ``a``, ``x``, ``b``."""
    return a_re * x_re - a_im * x_im + b_re, a_re * x_im + a_im * x_re + b_im


# --- the ratio recursion -------------------------------------------------------------------


@triton.jit
def _ratios_run_kernel(s_ptr, kap_ptr, x_in_ptr, out_ptr, rows, n, chunk, BLOCK: tl.constexpr):
    """Positions ``[c*chunk, (c+1)*chunk)`` of each row from the incoming value ``x_in[row, c]``."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    live = r < rows
    x_re, x_im = _load_complex(x_in_ptr, r * n_chunks + c, live, 0.0)
    for j in range(0, chunk):
        k = c * chunk + j
        pos = r * 0 + k  # a vector, so that masks stay vectors of bool
        ok = live & (pos < n)
        has_prev = ok & (pos > 0)
        s_re, s_im = _load_complex(s_ptr, r * n + k, ok, 1.0)
        kap = tl.load(kap_ptr + r * (n - 1) + k - 1, mask=has_prev, other=0.0)
        d_re = s_re - kap * x_re
        d_im = s_im - kap * x_im
        inv = 1.0 / (d_re * d_re + d_im * d_im)
        x_re = d_re * inv
        x_im = -d_im * inv
        _store_complex(out_ptr, r * n + k, x_re, x_im, ok)


@triton.jit
def _ratios_summary_kernel(s_ptr, kap_ptr, summary_ptr, rows, n, chunk, BLOCK: tl.constexpr):
    """Each chunk's product of step matrices ``[[0, 1], [-kap_{k-1}, s_k]]`` (8 reals, renormalised)."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    live = r < rows
    zero = (r * 0).to(summary_ptr.dtype.element_ty)
    one = zero + 1.0
    # M = [[a, b], [p, q]], each complex; start from the identity.
    a_re, a_im, b_re, b_im = one, zero, zero, zero
    p_re, p_im, q_re, q_im = zero, zero, one, zero
    for j in range(0, chunk):
        k = c * chunk + j
        pos = r * 0 + k  # a vector, so that masks stay vectors of bool
        ok = live & (pos < n)
        has_prev = ok & (pos > 0)
        s_re, s_im = _load_complex(s_ptr, r * n + k, ok, 1.0)
        kap = tl.load(kap_ptr + r * (n - 1) + k - 1, mask=has_prev, other=0.0)
        # Past the row's end the step is the identity (s = 1, kap = 0 would not be): keep M.
        new_p_re, new_p_im = _mul_add(s_re, s_im, p_re, p_im, -kap * a_re, -kap * a_im)
        new_q_re, new_q_im = _mul_add(s_re, s_im, q_re, q_im, -kap * b_re, -kap * b_im)
        a_re = tl.where(ok, p_re, a_re)
        a_im = tl.where(ok, p_im, a_im)
        b_re = tl.where(ok, q_re, b_re)
        b_im = tl.where(ok, q_im, b_im)
        p_re = tl.where(ok, new_p_re, p_re)
        p_im = tl.where(ok, new_p_im, p_im)
        q_re = tl.where(ok, new_q_re, q_re)
        q_im = tl.where(ok, new_q_im, q_im)
        # The ratio is scale-invariant; without this the entries grow like determinants.
        big = tl.maximum(tl.maximum(tl.maximum(tl.abs(a_re), tl.abs(a_im)), tl.maximum(tl.abs(b_re), tl.abs(b_im))),
                         tl.maximum(tl.maximum(tl.abs(p_re), tl.abs(p_im)), tl.maximum(tl.abs(q_re), tl.abs(q_im))))
        scale = 1.0 / big
        a_re, a_im, b_re, b_im = a_re * scale, a_im * scale, b_re * scale, b_im * scale
        p_re, p_im, q_re, q_im = p_re * scale, p_im * scale, q_re * scale, q_im * scale
    entry = (r * n_chunks + c) * 4  # four complex entries per chunk
    _store_complex(summary_ptr, entry, a_re, a_im, live)
    _store_complex(summary_ptr, entry + 1, b_re, b_im, live)
    _store_complex(summary_ptr, entry + 2, p_re, p_im, live)
    _store_complex(summary_ptr, entry + 3, q_re, q_im, live)


@triton.jit
def _ratios_prefix_kernel(summary_ptr, x_in_ptr, rows, n_chunks, BLOCK: tl.constexpr):
    """Each chunk's incoming ratio: ``x <- (a x + b) / (p x + q)`` chunk after chunk, from 0."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    live = r < rows
    x_re = (r * 0).to(x_in_ptr.dtype.element_ty)
    x_im = x_re
    for c in range(0, n_chunks):
        _store_complex(x_in_ptr, r * n_chunks + c, x_re, x_im, live)
        entry = (r * n_chunks + c) * 4
        a_re, a_im = _load_complex(summary_ptr, entry, live, 1.0)
        b_re, b_im = _load_complex(summary_ptr, entry + 1, live, 0.0)
        p_re, p_im = _load_complex(summary_ptr, entry + 2, live, 0.0)
        q_re, q_im = _load_complex(summary_ptr, entry + 3, live, 1.0)
        num_re, num_im = _mul_add(a_re, a_im, x_re, x_im, b_re, b_im)
        den_re, den_im = _mul_add(p_re, p_im, x_re, x_im, q_re, q_im)
        inv = 1.0 / (den_re * den_re + den_im * den_im)
        x_re, x_im = (num_re * den_re + num_im * den_im) * inv, (num_im * den_re - num_re * den_im) * inv


# --- the linear recurrence ----------------------------------------------------------------


@triton.jit
def _linear_run_kernel(e_ptr, m_ptr, x_in_ptr, out_ptr, rows, n, chunk, BLOCK: tl.constexpr):
    """``x_k = e_k + m_k x_{k-1}`` over one chunk of each row, from ``x_in[row, c]``."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    live = r < rows
    x_re, x_im = _load_complex(x_in_ptr, r * n_chunks + c, live, 0.0)
    for j in range(0, chunk):
        k = c * chunk + j
        pos = r * 0 + k  # a vector, so that masks stay vectors of bool
        ok = live & (pos < n)
        has_prev = ok & (pos > 0)
        e_re, e_im = _load_complex(e_ptr, r * n + k, ok, 0.0)
        m_re, m_im = _load_complex(m_ptr, r * n + k, has_prev, 0.0)  # m_0 is ignored
        x_re, x_im = _mul_add(m_re, m_im, x_re, x_im, e_re, e_im)
        _store_complex(out_ptr, r * n + k, x_re, x_im, ok)


@triton.jit
def _linear_summary_kernel(e_ptr, m_ptr, summary_ptr, rows, n, chunk, BLOCK: tl.constexpr):
    """Each chunk as one affine map ``x -> E + P x`` (4 reals)."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    c = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    live = r < rows
    big_e_re = (r * 0).to(summary_ptr.dtype.element_ty)
    big_e_im = big_e_re
    p_re = big_e_re + 1.0
    p_im = big_e_re
    for j in range(0, chunk):
        k = c * chunk + j
        pos = r * 0 + k  # a vector, so that masks stay vectors of bool
        ok = live & (pos < n)
        has_prev = ok & (pos > 0)
        e_re, e_im = _load_complex(e_ptr, r * n + k, ok, 0.0)
        m_re, m_im = _load_complex(m_ptr, r * n + k, has_prev, 0.0)
        m_re = tl.where(ok, m_re, 1.0)  # past the row's end the step is the identity map (e = 0, m = 1)
        big_e_re, big_e_im = _mul_add(m_re, m_im, big_e_re, big_e_im, e_re, e_im)
        p_re, p_im = _mul_add(m_re, m_im, p_re, p_im, 0.0, 0.0)
    entry = (r * n_chunks + c) * 2  # two complex entries per chunk
    _store_complex(summary_ptr, entry, big_e_re, big_e_im, live)
    _store_complex(summary_ptr, entry + 1, p_re, p_im, live)


@triton.jit
def _linear_prefix_kernel(summary_ptr, x_in_ptr, rows, n_chunks, BLOCK: tl.constexpr):
    """Each chunk's incoming value: ``x <- E + P x`` chunk after chunk, from 0."""
    r = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    live = r < rows
    x_re = (r * 0).to(x_in_ptr.dtype.element_ty)
    x_im = x_re
    for c in range(0, n_chunks):
        _store_complex(x_in_ptr, r * n_chunks + c, x_re, x_im, live)
        entry = (r * n_chunks + c) * 2
        big_e_re, big_e_im = _load_complex(summary_ptr, entry, live, 0.0)
        p_re, p_im = _load_complex(summary_ptr, entry + 1, live, 0.0)
        x_re, x_im = _mul_add(p_re, p_im, x_re, x_im, big_e_re, big_e_im)


# --- drivers --------------------------------------------------------------------------------


def _as_rows(t: Tensor, width: int) -> Tensor:
    """``(..., width)`` as a contiguous ``(rows, width)`` tensor (``rows`` from the batch shape, as width may be 0)."""
    return t.resolve_conj().reshape(math.prod(t.shape[:-1]), width).contiguous()


def _chunked(run, summarize, prefix, summary_width, first, second, shape, complex_dtype, chunk):
    """Launch the one-pass kernel, or the three chunked-scan launches; returns the complex result."""
    n = shape[-1]
    rows = math.prod(shape[:-1])
    real_dtype = first.dtype
    out = torch.empty(shape, dtype=complex_dtype, device=first.device)
    if rows == 0 or n == 0:
        return out
    chunk = chunk_length(rows, n) if chunk is None else max(1, min(int(chunk), n))
    n_chunks = math.ceil(n / chunk)
    out_pairs = torch.view_as_real(out)  # the kernels index rows * n + k: out is contiguous
    grid_rows = triton.cdiv(rows, BLOCK_ROWS)
    x_in = torch.zeros((rows, n_chunks, 2), dtype=real_dtype, device=first.device)
    if n_chunks > 1:
        summary = torch.empty((rows, n_chunks, summary_width), dtype=real_dtype, device=first.device)
        summarize[(grid_rows, n_chunks)](first, second, summary, rows, n, chunk, BLOCK=BLOCK_ROWS, num_warps=NUM_WARPS)
        prefix[(grid_rows,)](summary, x_in, rows, n_chunks, BLOCK=BLOCK_ROWS, num_warps=NUM_WARPS)
    run[(grid_rows, n_chunks)](first, second, x_in, out_pairs, rows, n, chunk, BLOCK=BLOCK_ROWS, num_warps=NUM_WARPS)
    return out


def left_ratios(s: Tensor, kap: Tensor, chunk: int | None = None) -> Tensor:
    """``gL_k = 1/(s_k - kap_{k-1} gL_{k-1})``: ``s`` complex ``(..., N)``, ``kap`` real ``(..., N-1)``.

    ``chunk`` forces the chunk length (``N`` or more: one pass); by default ``chunk_length``.
    """
    n = s.shape[-1]
    s_pairs = torch.view_as_real(_as_rows(s, n))
    kap_rows = _as_rows(kap.to(s_pairs.dtype), n - 1)
    return _chunked(_ratios_run_kernel, _ratios_summary_kernel, _ratios_prefix_kernel, 8,
                    s_pairs, kap_rows, s.shape, s.dtype, chunk)


def linear_recurrence(e: Tensor, m: Tensor, chunk: int | None = None) -> Tensor:
    """``x_k = e_k + m_k x_{k-1}`` with ``x_0 = e_0``: ``e``, ``m`` complex ``(..., N)`` (``m_0`` ignored)."""
    n = e.shape[-1]
    e_pairs = torch.view_as_real(_as_rows(e, n))
    m_pairs = torch.view_as_real(_as_rows(m.to(e.dtype), n))
    return _chunked(_linear_run_kernel, _linear_summary_kernel, _linear_prefix_kernel, 4,
                    e_pairs, m_pairs, e.shape, e.dtype, chunk)


__all__ = ["INTERPRETED", "chunk_length", "left_ratios", "linear_recurrence"]
