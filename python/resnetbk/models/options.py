"""``ModelOptions``: everything ``build_model`` needs, in one place (the FLOPs estimate reads it too).

It is the ``model`` part of the benchmark's config (``resnetbk.bench.config``: ``vocab_size`` 0
there, set from the data by ``model_options``, as ``bk_grad`` and ``mamba_cuda`` are from the
run's methods and device). No optimization method has a field here: a method changes the built
model through its declared extension points when it attaches (``models.common``,
``models.resnet_bk``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..validate import check_choice, check_int, check_number

ARCHITECTURES = ("transformer", "resnet_bk", "lstm", "mamba")
#: Architectures that carry position in their recurrent state: no position embedding.
RECURRENT = ("lstm", "mamba")
BK_GRADS = ("exact", "autograd")
BK_MODES = ("causal", "bidirectional")
#: The BK-Core's couplings and read-out (``models.bk_variants``): "fixed" is the Laplacian's 1,
#: "selective" input-dependent, "selective_real" input-dependent with the resolvent taken below the
#: spectrum (a real, positive decay: ``models.bk_variants``), "selective_real_tied" the same with
#: each write scaled by what the position forgets (Mamba's discretised step); "complex" reads (Re G, Im G), "gated"
#: multiplies the read-out by the query, "selective" lets the query weigh each channel before the
#: read-out's projection.
BK_COUPLINGS = ("fixed", "selective", "selective_real", "selective_real_tied")
#: The couplings whose resolvent is taken below the spectrum (``|g| <= 1 / b_max``, causal only).
REAL_COUPLINGS = ("selective_real", "selective_real_tied")
BK_READOUTS = ("complex", "gated", "selective")
#: The potential's write: "linear" one projection of the position's input per channel, "outer" the
#: product of a value and a key feature per channel (``models.bk_variants.OuterWrite``).
BK_WRITES = ("linear", "outer")
#: "normal": every Linear and Embedding weight normal(0, 0.02), biases zero (GPT-2's scheme);
#: "torch": PyTorch's own defaults (Linear: Kaiming-uniform; Embedding: normal(0, 1));
#: "uniform": PyTorch's word_language_model example: token embedding and LM head uniform in
#: +-0.1, the head's bias zero, everything else torch's defaults.
INITS = ("normal", "torch", "uniform")
#: "pre_norm": this package's Transformer (pre-norm, 4d GELU MLP, learned positions);
#: "word_language_model": the example's (post-norm torch TransformerEncoderLayer, ReLU MLP of
#: width d_ff, sinusoidal positions, embeddings scaled by sqrt(d)).
TRANSFORMER_STYLES = ("pre_norm", "word_language_model")


@dataclass(frozen=True)
class ModelOptions:
    architecture: str = "resnet_bk"  # see ARCHITECTURES
    vocab_size: int = 0  # 0: not known yet (the benchmark sets it from the data)
    d_model: int = 64
    n_layers: int = 4
    n_seq: int = 128  # the longest input (and the training window)
    dropout: float = 0.1
    #: Untied by default: the defaults study (docs/benchmark.md) measured a tied head 13% (Transformer)
    #: and 18% (ResNet-BK) worse in validation perplexity on the quick budget.
    tie_embeddings: bool = False
    head_bias: bool = False  # a bias on the LM head
    init: str = "normal"  # see INITS
    n_heads: int = 4
    transformer_style: str = "pre_norm"  # see TRANSFORMER_STYLES
    d_ff: int = 0  # the word_language_model Transformer's MLP width (0: 4 * d_model)
    final_norm: bool = True  # a LayerNorm before the LM head (the word_language_model example has none)
    num_experts: int = 4  # ResNet-BK's MoE feed-forward: top-1 of this many experts
    bk_channels: int = 1  # BK-Core channels per block (independent tridiagonal systems)
    bk_mode: str = "causal"  # see BK_MODES: "bidirectional" reads future tokens (not a language model)
    potential_limit: float = 3.0  # the soft clamp of the BK-Core's potential
    bk_coupling: str = "fixed"  # see BK_COUPLINGS
    bk_coupling_max: float = 32.0  # the selective couplings' bound (b_max: effective Im z down to 1/b_max; the scale below the spectrum)
    bk_readout: str = "complex"  # see BK_READOUTS
    bk_write: str = "linear"  # see BK_WRITES
    bk_write_keys: int = 8  # the outer-product write's keys (bk_channels / keys values per key)
    #: The no_mixer control: ResNet-BK without its BK-Core mixer (the blocks' sequence channel is
    #: absent, so the update is the feed-forward's alone): a position-wise model, what the mixer adds.
    no_mixer: bool = False
    #: "exact": the BK-Core's O(N) analytic backward; "autograd": autograd through the torch implementation.
    bk_grad: str = "exact"
    #: LSTM cell width; 0: matched to ResNet-BK's non-embedding parameter count (models.recurrent).
    lstm_hidden: int = 0
    mamba_d_state: int = 16  # the selective scan's state size per channel (the Mamba paper's N)
    #: Mamba's inner width; 0: matched to ResNet-BK's non-embedding parameters (models.recurrent).
    mamba_inner: int = 0
    #: Mamba layers per block: 2 matches a block's parameters (the Mamba paper's convention).
    mamba_layers_per_block: int = 2
    #: The scan through mamba-ssm's CUDA kernel (CUDA and the mamba-ssm package needed).
    mamba_cuda: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("architecture", ARCHITECTURES), ("init", INITS), ("bk_mode", BK_MODES),
                              ("transformer_style", TRANSFORMER_STYLES), ("bk_grad", BK_GRADS),
                              ("bk_coupling", BK_COUPLINGS), ("bk_readout", BK_READOUTS), ("bk_write", BK_WRITES)):
            check_choice(self, name, allowed)
        for name in ("d_model", "n_layers", "n_seq", "n_heads", "num_experts", "bk_channels"):
            check_int(self, name, low=1)
        check_int(self, "vocab_size", low=0, expected="0 (from the data) or a positive integer")
        check_number(self, "potential_limit", low=0.0, low_open=True)
        # Below the spectrum b_max is only the resolvent's scale; elsewhere it bounds couplings above the Laplacian's 1.
        check_number(self, "bk_coupling_max", low=0.0 if self.bk_coupling in REAL_COUPLINGS else 1.0, low_open=True)
        check_number(self, "dropout", low=0.0, high=1.0, high_open=True)
        if self.no_mixer and self.architecture != "resnet_bk":
            raise ValueError(f"no_mixer: only ResNet-BK has a BK-Core mixer to leave out, got architecture "
                             f"{self.architecture!r}; set it to false")
        if self.bk_variant and (self.architecture != "resnet_bk" or self.no_mixer):
            raise ValueError(f"bk_coupling/bk_readout/bk_write: variants of ResNet-BK's mixer, but architecture is "
                             f"{self.architecture!r}{' with no_mixer' if self.no_mixer else ''}; leave them at "
                             f"'fixed'/'complex'/'linear'")
        if self.bk_coupling_max != 32.0 and self.bk_coupling == "fixed":
            raise ValueError(f"bk_coupling_max: bounds the selective couplings, but bk_coupling is {self.bk_coupling!r}; "
                             f"set bk_coupling: selective or selective_real, or leave bk_coupling_max at 32")
        if self.bk_coupling in REAL_COUPLINGS and self.bk_mode != "causal":
            raise ValueError(f"bk_coupling: {self.bk_coupling} keeps |g| <= 1/b_max by the causal recursion only; the "
                             f"{self.bk_mode!r} resolvent can grow with the sequence. Set bk_mode: causal")
        check_int(self, "bk_write_keys", low=1)
        if self.bk_write == "outer" and self.bk_channels % self.bk_write_keys:
            raise ValueError(f"bk_write_keys: the outer-product write needs bk_channels ({self.bk_channels}) to be a "
                             f"multiple of the keys, got {self.bk_write_keys}; pick a divisor of bk_channels")
        if self.bk_write != "outer" and self.bk_write_keys != 8:
            where = ("set bk_write: outer or " if self.architecture == "resnet_bk"
                     else f"architecture {self.architecture!r} has no BK-Core: ")
            raise ValueError(f"bk_write_keys: sets the outer-product write's keys, but bk_write is {self.bk_write!r}; "
                             f"{where}leave bk_write_keys at 8")
        if self.architecture == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model = {self.d_model} must be divisible by n_heads = {self.n_heads}")
        for name in ("mamba_d_state", "mamba_layers_per_block"):
            check_int(self, name, low=1)
        for name in ("lstm_hidden", "mamba_inner", "d_ff"):
            check_int(self, name, low=0, expected="0 (matched) or a positive integer")

    def replace(self, **changes) -> ModelOptions:
        return dataclasses.replace(self, **changes)

    @property
    def bk_variant(self) -> bool:
        """Whether the BK-Core mixer is one of its variants (``models.bk_variants``)."""
        return (self.bk_coupling, self.bk_readout, self.bk_write) != ("fixed", "complex", "linear")

    @property
    def position_embedding(self) -> bool:
        """Whether the model adds a learned position embedding (not the recurrent ones, nor the
        word_language_model Transformer, whose positions are sinusoidal)."""
        return self.architecture not in RECURRENT and not self.word_lm_transformer

    @property
    def word_lm_transformer(self) -> bool:
        """The word_language_model example's Transformer (``transformer_style``)."""
        return self.architecture == "transformer" and self.transformer_style == "word_language_model"
