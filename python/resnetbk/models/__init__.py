"""The language models of the benchmark, built from one ``ModelOptions``."""

from __future__ import annotations

from .common import LanguageModel
from .options import ARCHITECTURES, ModelOptions
from .recurrent import LSTMBlock, MambaBlock, lstm_layer_parameters, mamba_layer_parameters, matched_lstm_hidden, matched_mamba_inner
from .resnet_bk import ResNetBKBlock
from .transformer import PostNormTransformerBlock, TransformerBlock


def build_model(options: ModelOptions) -> LanguageModel:
    """A ``LanguageModel`` of ``options.architecture`` (one of ``ARCHITECTURES``)."""
    if not isinstance(options, ModelOptions):
        raise TypeError(f"options: expected a ModelOptions, got {type(options).__name__}")
    if options.vocab_size < 1:
        raise ValueError("vocab_size: 0 means not known yet; set it (the benchmark's model_options sets it from the data)")
    o = options
    if o.word_lm_transformer:
        blocks = [PostNormTransformerBlock(o.d_model, o.n_heads, o.d_ff or 4 * o.d_model, o.dropout)
                  for _ in range(o.n_layers)]
    elif o.architecture == "transformer":
        blocks = [TransformerBlock(o.d_model, o.n_heads, o.dropout) for _ in range(o.n_layers)]
    elif o.architecture == "lstm":
        hidden = lstm_hidden(o)
        blocks = [LSTMBlock(o.d_model, hidden, o.dropout) for _ in range(o.n_layers)]
    elif o.architecture == "mamba":
        blocks = [MambaBlock(o.d_model, o.mamba_d_state, mamba_inner(o), o.mamba_layers_per_block)
                  for _ in range(o.n_layers)]
    else:
        blocks = [ResNetBKBlock(o.d_model, **resnet_bk_block_options(o)) for _ in range(o.n_layers)]
    model = LanguageModel(o, blocks)
    if o.architecture == "mamba" and o.mamba_cuda:
        for block in model.blocks:
            block.use_cuda_kernels(True)
    return model


def resnet_bk_block_options(o: ModelOptions) -> dict:
    """``ResNetBKBlock``'s keyword arguments from the model's options."""
    return dict(num_experts=o.num_experts, dropout=o.dropout, channels=o.bk_channels, mode=o.bk_mode,
                potential_limit=o.potential_limit, grad=o.bk_grad, mixer=not o.no_mixer, coupling=o.bk_coupling,
                coupling_max=o.bk_coupling_max, readout=o.bk_readout, write=o.bk_write, write_keys=o.bk_write_keys)


def _resnet_bk_block_parameters(options: ModelOptions) -> int:
    reference = ResNetBKBlock(options.d_model, **resnet_bk_block_options(options))
    return sum(p.numel() for p in reference.parameters())


def lstm_hidden(options: ModelOptions) -> int:
    """``options.lstm_hidden``, or (0) the cell width that matches ResNet-BK's non-embedding
    parameters per block at the same width and depth."""
    if options.lstm_hidden:
        return options.lstm_hidden
    return matched_lstm_hidden(options.d_model, _resnet_bk_block_parameters(options))


def mamba_inner(options: ModelOptions) -> int:
    """``options.mamba_inner``, or (0) the inner width that matches ResNet-BK's non-embedding
    parameters per block (``mamba_layers_per_block`` Mamba layers per block)."""
    if options.mamba_inner:
        return options.mamba_inner
    return matched_mamba_inner(options.d_model, options.mamba_d_state, options.mamba_layers_per_block,
                               _resnet_bk_block_parameters(options))


__all__ = ["ARCHITECTURES", "LanguageModel", "ModelOptions", "build_model", "lstm_hidden", "lstm_layer_parameters",
           "mamba_inner", "mamba_layer_parameters"]
