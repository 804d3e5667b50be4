"""The language models of the benchmark, built from one ``ModelOptions``."""

from __future__ import annotations

from .common import LanguageModel
from .options import ARCHITECTURES, ModelOptions
from .resnet_bk import ResNetBKBlock
from .transformer import TransformerBlock


def build_model(options: ModelOptions) -> LanguageModel:
    """A ``LanguageModel`` of ``options.architecture`` (``"transformer"`` or ``"resnet_bk"``)."""
    if not isinstance(options, ModelOptions):
        raise TypeError(f"options: expected a ModelOptions, got {type(options).__name__}")
    o = options
    if o.architecture == "transformer":
        blocks = [TransformerBlock(o.d_model, o.n_heads, o.dropout) for _ in range(o.n_layers)]
    else:
        blocks = [
            ResNetBKBlock(o.d_model, o.num_experts, o.dropout, o.bk_channels, o.bk_mode, o.potential_limit, o.bk_grad,
                          o.sparse_bk, o.sparse_bk_target)
            for _ in range(o.n_layers)
        ]
    return LanguageModel(o, blocks)


__all__ = ["ARCHITECTURES", "LanguageModel", "ModelOptions", "build_model"]
