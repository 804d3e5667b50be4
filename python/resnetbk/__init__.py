"""ResNet-BK: a language model whose sequence mixer is the BK-Core, an O(N) resolvent diagonal.

``resnetbk.bk_core`` is the op; ``resnetbk.set_num_threads`` sets the Rust kernels' thread count.
"""

import os
import sys

# torch's OpenMP workers (GNU libgomp) spin after each parallel op before they sleep: ~300,000
# spins by default. The Rust kernels run on that same team (rust/thread-team), so spinning no
# longer competes with them, and a short spin saves the sleep and wake-up between back-to-back
# torch ops; but on a loaded machine a long spin starves the other process and a team member
# that lost its core stalls every barrier. libgomp reads GOMP_SPINCOUNT once, when torch loads:
# where the user has chosen neither it nor OMP_WAIT_POLICY and torch is not loaded yet, spin
# 3,000 times. Measured (benches/omp_wait_policy.py, 2 threads, 2-core Sapphire Rapids VM,
# 2026-12-01), training steps of the quick preset's ResNet-BK / Transformer against sleeping at
# once (PASSIVE): idle 313 / 300 ms vs 357 / 328; with another process busy on the cores 604 /
# 585 ms vs 570 / 575; the default spin: idle 297 / 303, loaded 800 / 752.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ and "torch" not in sys.modules:
    os.environ["GOMP_SPINCOUNT"] = "3000"

from ._native import __version__  # the crate version: Cargo.toml's [workspace.package] (pyproject reads it too)
from .core import bk_core, dense_resolvent_diag  # after the spin count, before torch loads
from .threads import get_num_threads, set_num_threads

__all__ = ["bk_core", "dense_resolvent_diag", "get_num_threads", "set_num_threads", "__version__"]
