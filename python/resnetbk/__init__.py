"""ResNet-BK: a language model whose sequence mixer is the BK-Core, an O(N) resolvent diagonal.

``resnetbk.bk_core`` is the op; ``resnetbk.set_num_threads`` sets the Rust kernels' thread count.
"""

import os
import sys

# torch's OpenMP workers (libgomp) spin for a while after each parallel op, competing with the
# Rust kernels' thread pool that runs next and, on a busy machine, with everything else.
# libgomp reads the policy once, when torch loads: where the user has not chosen one and torch
# is not loaded yet, let idle workers sleep. Measured (benches/omp_wait_policy.py, 2 threads,
# 2-core VM): a quick-preset training step 1.3x faster idle and 2.0x faster on a loaded machine,
# the BK op alone 6x faster loaded. OMP_WAIT_POLICY=ACTIVE (or any value) keeps the user's choice.
if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from ._native import __version__  # the crate version: Cargo.toml's [workspace.package] (pyproject reads it too)
from .core import bk_core, dense_resolvent_diag  # after the policy, before torch loads
from .threads import get_num_threads, set_num_threads

__all__ = ["bk_core", "dense_resolvent_diag", "get_num_threads", "set_num_threads", "__version__"]
