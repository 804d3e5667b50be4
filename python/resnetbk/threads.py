"""How many threads the Rust kernels use.

By default they follow torch's intra-op thread count (``torch.get_num_threads()``), read at each
call, so ``torch.set_num_threads`` governs both. :func:`set_num_threads` overrides that.
"""

from __future__ import annotations

import torch

_override: int | None = None


def set_num_threads(threads: int | None) -> None:
    """Use ``threads`` threads in the Rust kernels; ``None`` goes back to following torch."""
    global _override
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads: expected a positive int or None, got {threads!r}")
    _override = threads


def get_num_threads() -> int:
    """The thread count the next Rust kernel call will use."""
    return _override if _override is not None else torch.get_num_threads()
