"""The two language models of the benchmark, built from one config."""

from __future__ import annotations

from .common import LanguageModel
from .resnet_bk import ResNetBKBlock
from .transformer import TransformerBlock

ARCHITECTURES = ("transformer", "resnet_bk")


def build_model(architecture: str, vocab_size: int, d_model: int, n_layers: int, n_seq: int, *, dropout: float = 0.1,
                tie_embeddings: bool = True, n_heads: int = 4, num_experts: int = 4, bk_channels: int = 1,
                bk_mode: str = "causal", potential_limit: float = 3.0, analytic_gradient: bool = True) -> LanguageModel:
    """A ``LanguageModel`` of the given architecture (``"transformer"`` or ``"resnet_bk"``)."""
    if architecture == "transformer":
        blocks = [TransformerBlock(d_model, n_heads, dropout) for _ in range(n_layers)]
    elif architecture == "resnet_bk":
        blocks = [
            ResNetBKBlock(d_model, num_experts, dropout, bk_channels, bk_mode, potential_limit, analytic_gradient)
            for _ in range(n_layers)
        ]
    else:
        raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {architecture!r}")
    return LanguageModel(vocab_size, d_model, n_seq, blocks, dropout, tie_embeddings)


__all__ = ["ARCHITECTURES", "LanguageModel", "build_model"]
