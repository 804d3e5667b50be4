"""The models people pick instead for cheap sequence modelling: an LSTM and Mamba.

Both run inside the same ``LanguageModel`` as the others (token embedding, final LayerNorm, LM
head, data, optimizer and evaluation shared); they carry position in their state, so they get no
position embedding. Their widths are chosen so that the non-embedding parameter count matches
ResNet-BK's at the same ``d_model``/``n_layers``: the LSTM's cell width (``matched_lstm_hidden``)
and Mamba's inner width (``matched_mamba_inner``; two Mamba layers per block, as the Mamba paper
matches one Transformer layer; about 2 x d_model, the paper's expansion, at d_model = 64).

- ``LSTMBlock``: one layer of torch's LSTM (oneDNN on the CPU, cuDNN on a GPU), the layer of
  PyTorch's word_language_model example; when its cell is wider than ``d_model`` a linear layer
  maps its output back (outside the recurrence: torch's own ``proj_size`` would leave oneDNN for
  a slow generic path). No residual, no norm: the example's stacked LSTM, with dropout on each
  layer's output.
- ``MambaBlock``: two residual Mamba layers (RMSNorm, in-projection, causal depthwise conv,
  selective scan, gated out-projection; Gu and Dao 2023) from the ``mambapy`` package (pure
  PyTorch, a parallel scan), its scan on a float32 CPU through a Rust kernel
  (``models.selective_scan``, held to the definition and to mambapy's scan); on CUDA with
  ``mamba-ssm`` installed, ``mamba_cuda=True`` runs the scan through mamba-ssm's fused kernel
  instead (same weights, same outputs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .dropout import Dropout
from .selective_scan import kernel_scan_class


class LSTMBlock(nn.Module):
    """One LSTM layer (+ a linear map back to ``d_model`` when wider), then dropout.

    By default every window starts from a zero state. With ``carry`` on (``LanguageModel.
    state_carry``), each call starts from the previous call's final state, detached: truncated
    backpropagation through time over consecutive windows, as PyTorch's word_language_model
    example trains and evaluates."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(d_model, hidden, batch_first=True)
        self.projection = nn.Linear(hidden, d_model) if hidden != d_model else None
        self.dropout = Dropout(dropout)
        self.carry = False
        self.state: tuple | None = None  # (h, c) after the last call, when carrying

    def forward(self, x: Tensor) -> Tensor:
        state = self.state if self.carry else None
        if state is not None and state[0].shape[1] != x.shape[0]:
            raise ValueError(f"LSTM state carried over from a batch of {state[0].shape[1]} rows, got {x.shape[0]}; "
                             "reset it (LanguageModel.reset_state) when the batch changes")
        out, final = self.lstm(x, state)
        if self.carry:
            self.state = tuple(t.detach() for t in final)
        if self.projection is not None:
            out = self.projection(out)
        return self.dropout(out)


def lstm_layer_parameters(d_model: int, hidden: int) -> int:
    """Parameters of one ``LSTMBlock``: four gates over the input and the recurrent state, two
    biases, and the linear map back to ``d_model`` when ``hidden != d_model``."""
    projection = (hidden + 1) * d_model if hidden != d_model else 0
    return 4 * hidden * (d_model + hidden) + 8 * hidden + projection


def matched_lstm_hidden(d_model: int, per_layer_target: int) -> int:
    """The cell width whose ``LSTMBlock`` has the parameter count nearest ``per_layer_target``."""
    return min(range(1, 16 * d_model + 1), key=lambda h: abs(lstm_layer_parameters(d_model, h) - per_layer_target))


class MambaBlock(nn.Module):
    """Two residual Mamba layers (mambapy's ``ResidualBlock``: x + Mamba(RMSNorm(x)))."""

    def __init__(self, d_model: int, d_state: int, inner: int, layers: int = 2):
        super().__init__()
        try:
            from mambapy.mamba import MambaConfig, ResidualBlock
        except ImportError as error:  # a declared dependency; only a broken install lacks it
            raise ImportError("architecture 'mamba' needs the mambapy package: pip install mambapy") from error
        self.config = MambaConfig(d_model=d_model, n_layers=layers, d_state=d_state)
        self.config.d_inner = inner  # any width, not only a multiple of d_model
        self.layers = nn.ModuleList([ResidualBlock(self.config) for _ in range(layers)])
        for layer in self.layers:  # the scan through the Rust kernel on a float32 CPU (models.selective_scan)
            layer.mixer.__class__ = kernel_scan_class(type(layer.mixer))

    @torch.no_grad()
    def reset_parameters_after_init(self) -> None:
        """Mamba's step-size projection, after the model-wide N(0, 0.02) init: weights uniform in
        +-dt_rank^-1/2, bias the inverse softplus of steps log-uniform in [dt_min, dt_max]
        (Gu and Dao 2023, as in the reference implementation), so that each channel starts with
        its own time scale rather than all at softplus(0)."""
        c = self.config
        for layer in self.layers:
            dt_proj = layer.mixer.dt_proj
            bound = c.dt_rank ** -0.5 * c.dt_scale
            nn.init.uniform_(dt_proj.weight, -bound, bound)
            dt = torch.exp(torch.rand(c.d_inner) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            dt = dt.clamp(min=c.dt_init_floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def use_cuda_kernels(self, enabled: bool) -> None:
        """Switch the selective scan between mamba-ssm's CUDA kernel and mambapy's parallel scan."""
        if enabled:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # a clear ImportError where mamba-ssm is missing
        self.config.use_cuda = enabled  # shared by the layers' mixers
        for layer in self.layers:
            if enabled:
                layer.mixer.selective_scan_cuda = selective_scan_fn


def mamba_layer_parameters(d_model: int, inner: int, d_state: int, d_conv: int = 4) -> int:
    """Parameters of one residual Mamba layer (mambapy's): in-projection ``d -> 2e``, depthwise
    conv with bias ``e (k + 1)``, ``x_proj`` ``e -> r + 2N``, ``dt_proj`` ``r -> e`` with bias,
    ``A_log`` ``e N``, ``D`` ``e``, out-projection ``e -> d``, the RMSNorm's ``d``
    (``r = ceil(d / 16)``, the step-size rank)."""
    rank = math.ceil(d_model / 16)
    return inner * (3 * d_model + 2 * rank + 3 * d_state + d_conv + 3) + d_model


def matched_mamba_inner(d_model: int, d_state: int, layers: int, per_block_target: int) -> int:
    """The inner width whose ``layers`` Mamba layers have the parameter count nearest ``per_block_target``."""
    return min(range(1, 16 * d_model + 1),
               key=lambda e: abs(layers * mamba_layer_parameters(d_model, e, d_state) - per_block_target))


def mamba_cuda_available() -> bool:
    """Whether mamba-ssm's CUDA selective scan can run here."""
    if not torch.cuda.is_available():
        return False
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except ImportError:
        return False
    return True
