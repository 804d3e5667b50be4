"""ResNet-BK: a language model whose sequence mixer is the BK-Core, an O(N) resolvent diagonal.

``resnetbk.bk_core`` is the op; ``resnetbk.set_num_threads`` sets the Rust kernels' thread count.
"""

from .core import bk_core, dense_resolvent_diag
from .threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["bk_core", "dense_resolvent_diag", "get_num_threads", "set_num_threads", "__version__"]
