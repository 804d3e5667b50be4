"""The BK-Core: resolvent diagonals of tridiagonal operators, with every backend and reference."""

from .api import BACKENDS, GRADS, MODES, bk_core
from .reference import dense_resolvent_diag

__all__ = ["BACKENDS", "GRADS", "MODES", "bk_core", "dense_resolvent_diag"]
