"""Type stubs for ``resnetbk._native``, the Rust extension (``rust/resnetbk-py``).

Arrays are numpy views of torch memory: C-contiguous, ``rows x n`` (``n - 1`` for the
off-diagonals); outputs are preallocated and filled in place. ``mode`` is ``"causal"`` or
``"bidirectional"``; ``threads`` the Rust pool's size; ``mask`` (``rows x n`` bool, or None)
zeroes the outputs it masks and ignores their upstream gradients.
"""

from typing import Optional

import numpy as np
import numpy.typing as npt

__version__: str

TracedOp = tuple[str, list[list[int]], list[list[int]], bool, str, str, str, int]

def bk_forward_f32(a: npt.NDArray[np.float32], upper: npt.NDArray[np.float32], lower: Optional[npt.NDArray[np.float32]],
                   z: npt.NDArray[np.complex64], out: npt.NDArray[np.complex64], mode: str, threads: int,
                   mask: Optional[npt.NDArray[np.bool_]] = None) -> None: ...
def bk_forward_f64(a: npt.NDArray[np.float64], upper: npt.NDArray[np.float64], lower: Optional[npt.NDArray[np.float64]],
                   z: npt.NDArray[np.complex128], out: npt.NDArray[np.complex128], mode: str, threads: int,
                   mask: Optional[npt.NDArray[np.bool_]] = None) -> None: ...
def bk_backward_f32(a: npt.NDArray[np.float32], upper: npt.NDArray[np.float32], lower: Optional[npt.NDArray[np.float32]],
                    z: npt.NDArray[np.complex64], grad_out: npt.NDArray[np.complex64], grad_a: npt.NDArray[np.float32],
                    grad_upper: npt.NDArray[np.float32], grad_lower: Optional[npt.NDArray[np.float32]],
                    grad_z: npt.NDArray[np.complex64], mode: str, threads: int,
                    mask: Optional[npt.NDArray[np.bool_]] = None) -> None: ...
def bk_backward_f64(a: npt.NDArray[np.float64], upper: npt.NDArray[np.float64], lower: Optional[npt.NDArray[np.float64]],
                    z: npt.NDArray[np.complex128], grad_out: npt.NDArray[np.complex128], grad_a: npt.NDArray[np.float64],
                    grad_upper: npt.NDArray[np.float64], grad_lower: Optional[npt.NDArray[np.float64]],
                    grad_z: npt.NDArray[np.complex128], mode: str, threads: int,
                    mask: Optional[npt.NDArray[np.bool_]] = None) -> None: ...
def price_trace(records: list[TracedOp]) -> dict:
    """``{"total", "by_phase", "by_category", "by_component", "by_op", "unknown"}``."""
def bk_flops_per_element() -> dict[str, dict[str, int]]: ...
def optimizer_flops_per_parameter(kind: str, weight_decay: bool) -> int: ...
def softmax_xent_grad_f32(logits: npt.NDArray[np.float32], targets: npt.NDArray[np.int64], ignore_index: int,
                          nll: npt.NDArray[np.float32], grad_bias: Optional[npt.NDArray[np.float32]],
                          gradient: bool, threads: int) -> None:
    """In place: ``logits`` (vocab, rows) becomes ``softmax - onehot(targets)`` per column (0 on
    ignored rows), ``nll`` (rows) the NLL, ``grad_bias`` (vocab) += the gradient's row sums.
    Without ``gradient`` only ``nll`` is computed (``grad_bias`` must be None)."""
def dropout_f32(input: npt.NDArray[np.float32], out: npt.NDArray[np.float32], keep: float, seed: int, offset: int,
                threads: int) -> None:
    """``out[i] = input[i] / keep`` where element ``offset + i`` is kept under ``seed``, else 0."""
def causal_attention_forward_f32(qkv: npt.NDArray[np.float32], out: npt.NDArray[np.float32],
                                 lse: npt.NDArray[np.float32], batch: int, seq: int, heads: int, head_dim: int,
                                 scale: float, keep: float, seed: int, threads: int) -> None:
    """Causal self-attention with dropout (kept with probability ``keep``, masks from ``seed``) on
    its probabilities: from ``qkv`` (batch, seq, 3, heads, head_dim) writes ``out`` (batch, seq,
    heads, head_dim) and the log-sum-exp ``lse`` (batch, heads, seq); flat float32 arrays."""
def causal_attention_backward_f32(qkv: npt.NDArray[np.float32], grad_out: npt.NDArray[np.float32],
                                  lse: npt.NDArray[np.float32], grad_qkv: npt.NDArray[np.float32], batch: int,
                                  seq: int, heads: int, head_dim: int, scale: float, keep: float, seed: int,
                                  threads: int) -> None:
    """The backward of ``causal_attention_forward_f32``: writes ``grad_qkv`` from ``grad_out``
    and the forward's ``lse``, with the forward's ``scale``, ``keep`` and ``seed``."""
def selective_scan_forward_f32(x: npt.NDArray[np.float32], delta: npt.NDArray[np.float32],
                               a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], c: npt.NDArray[np.float32],
                               d: npt.NDArray[np.float32], y: npt.NDArray[np.float32], batch: int, seq: int,
                               channels: int, states: int, threads: int) -> None:
    """Mamba's selective scan: from ``x``, ``delta`` (batch, seq, channels), ``a`` (channels,
    states), ``b``, ``c`` (batch, seq, states) and ``d`` (channels) writes ``y`` (batch, seq,
    channels); flat float32 arrays."""
def selective_scan_backward_f32(x: npt.NDArray[np.float32], delta: npt.NDArray[np.float32],
                                a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], c: npt.NDArray[np.float32],
                                d: npt.NDArray[np.float32], grad_y: npt.NDArray[np.float32],
                                grads: tuple, batch: int, seq: int, channels: int, states: int,
                                threads: int) -> None:
    """The backward of ``selective_scan_forward_f32``: writes ``grads`` (grad_x, grad_delta,
    grad_a, grad_b, grad_c, grad_d), each shaped as its input, from ``grad_y``."""
