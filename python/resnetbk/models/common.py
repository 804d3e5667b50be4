"""What both language models share: token + learned position embeddings, a stack of residual
blocks, a final LayerNorm and the LM head (optionally tied to the token embedding).

The blocks run as *stages*: one block each by default. The optimization methods change the
model only through these declared extension points, set when they attach (``resnetbk.methods``):

* ``stage_ranges`` and ``shortened``: stages of several blocks that run through a module of the
  form ``shortened(x, blocks, active)`` (multi-scale's shortened middle group);
* ``depth``: a module ``depth(x, stages)`` that runs the stages and decides, per position, where
  to stop (ACT halting, confident early exit);
* ``stage_overrides``: ``{block: fn(x, active=None)}`` run instead of that block (Koopman mode);
* inside the blocks, the BK-Core mixer's ``gate`` and ``shift`` (``models.resnet_bk``);
* a submodule with an ``aux_loss_name`` contributes its ``aux_loss`` to ``aux_losses()``;
* ``init_attached(module)``: the model's initialisation for a module attached later.
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout
from .head import IGNORE_INDEX, LMHead
from .options import ModelOptions
from .transformer import sinusoidal_positions


class LanguageModel(nn.Module):
    """``blocks`` map ``(B, N, d) -> (B, N, d)``; ``aux_losses()`` names the auxiliary losses of the last forward."""

    def __init__(self, options: ModelOptions, blocks: list):
        super().__init__()
        d_model = options.d_model
        self.options = options
        self.n_seq = options.n_seq
        self.token_embedding = nn.Embedding(options.vocab_size, d_model)
        # The recurrent models know position from their state.
        self.position_embedding = nn.Embedding(options.n_seq, d_model) if options.position_embedding else None
        # The word_language_model Transformer: fixed sinusoidal positions, embeddings times sqrt(d).
        self.embedding_scale = math.sqrt(d_model) if options.word_lm_transformer else 1.0
        self.register_buffer("fixed_positions", sinusoidal_positions(options.n_seq, d_model)
                             if options.word_lm_transformer else None, persistent=False)
        self.dropout = Dropout(options.dropout)
        self.blocks = nn.ModuleList(blocks)
        # The extension points (see the module's doc); the methods set them when they attach.
        self.stage_ranges: list = [(i, i + 1, False) for i in range(options.n_layers)]  # (first, stop, shortened)
        self.shortened: Optional[nn.Module] = None
        self.depth: Optional[nn.Module] = None
        self.stage_overrides: dict = {}
        self.final_norm = nn.LayerNorm(d_model) if options.final_norm else nn.Identity()
        self.lm_head = LMHead(d_model, options.vocab_size, bias=options.head_bias)
        if options.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        if options.init == "normal":  # else the modules keep torch's own initialisation
            self.apply(_init_weights)
        elif options.init == "uniform":
            with torch.no_grad():
                self.token_embedding.weight.uniform_(-0.1, 0.1)
                self.lm_head.weight.uniform_(-0.1, 0.1)
                if self.lm_head.bias is not None:
                    self.lm_head.bias.zero_()
        for module in self.blocks.modules():
            if hasattr(module, "reset_parameters_after_init"):  # inits the model-wide one must not override
                module.reset_parameters_after_init()

    def init_attached(self, module: nn.Module) -> nn.Module:
        """``module`` (attached by a method after the model was built) initialised as the model's
        own modules were (``options.init``), then by its own ``reset_parameters_after_init``."""
        if self.options.init == "normal":
            module.apply(_init_weights)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters_after_init"):
                sub.reset_parameters_after_init()
        return module

    def forward(self, tokens: Tensor, targets: Optional[Tensor] = None, *, features_only: bool = False,
                fused_head: bool = True):
        """Logits ``(B, N, vocab)`` for token ids ``(B, N)``, any ``N <= n_seq``.

        With ``targets (B, N)``: ``(nll_sum, hidden)``, the summed next-token NLL over the targets
        that are not ``IGNORE_INDEX`` (float32) and the final hidden states, through the fused
        head (``models.head``: the full logits never exist) or, with ``fused_head=False``, the
        plain path (logits, then cross-entropy). With ``features_only``: the hidden states alone.
        Going through ``forward`` lets module trackers (and DDP) see every submodule."""
        hidden = self.features(tokens)
        if features_only:
            return hidden
        if targets is None:
            return self.lm_head(hidden)
        if fused_head:
            return self.lm_head(hidden, targets), hidden
        logits = self.lm_head(hidden).float()
        nll_sum = F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return nll_sum, hidden

    def features(self, tokens: Tensor) -> Tensor:
        """The final-LayerNorm hidden states ``(B, N, d)`` that the LM head reads."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens: expected (batch, length) token ids, got shape {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if not 1 <= n <= self.n_seq:
            raise ValueError(f"tokens: length {n} is outside 1..n_seq = {self.n_seq}")
        x = self.token_embedding(tokens)
        if self.embedding_scale != 1.0:
            x = x * self.embedding_scale
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(n, device=tokens.device))
        if self.fixed_positions is not None:
            x = x + self.fixed_positions[:n].to(x.dtype)
        x = self.dropout(x)
        return self.final_norm(self.blocks_forward(x))

    def blocks_forward(self, x: Tensor) -> Tensor:
        """The blocks alone on embedded inputs ``(B, N, d)`` (no embedding, final norm or head): the
        sequence mixers' share of the work, which the scaling study times on its own."""
        stages = [(self._stage(first, stop, shortened), stop - first) for first, stop, shortened in self.stage_ranges]
        if self.depth is not None:
            return self.depth(x, stages)
        for stage, _ in stages:
            x = stage(x, None)
        return x

    def _stage(self, first: int, stop: int, shortened: bool):
        if shortened:  # an overridden block inside the group runs in its place, at the group's length
            blocks = [self.stage_overrides.get(i, self.blocks[i]) for i in range(first, stop)]
            return lambda x, active: self.shortened(x, blocks, active)
        if first in self.stage_overrides:
            return self.stage_overrides[first]
        block = self.blocks[first]
        return lambda x, active: block(x) if active is None else block(x, active)

    def _stateful_blocks(self) -> list:
        return [block for block in self.blocks if hasattr(block, "carry")]

    def reset_state(self) -> None:
        """Forget the recurrent state carried from earlier windows (see ``state_carry``)."""
        for block in self._stateful_blocks():
            block.state = None

    def set_state_carry(self, on: bool) -> None:
        """The recurrent blocks (LSTM) carry their state from one call to the next (``on``), or
        start every window fresh; either way from a fresh state now."""
        for block in self._stateful_blocks():
            block.carry, block.state = on, None

    @contextlib.contextmanager
    def state_carry(self, on: bool):
        """Within: the recurrent blocks (LSTM) carry their state from one call to the next
        (``on``) or start every window fresh; entered with a fresh state, and on leaving the
        previous setting and state come back (an evaluation inside a training epoch does not
        disturb the training stream's state). A model without recurrent blocks is unaffected."""
        saved = [(block.carry, block.state) for block in self._stateful_blocks()]
        self.set_state_carry(on)
        try:
            yield self
        finally:
            for block, (carry, state) in zip(self._stateful_blocks(), saved):
                block.carry, block.state = carry, state

    def aux_losses(self) -> dict:
        """The auxiliary losses of the last forward, by name (unweighted), summed over the modules
        that declare one (``aux_loss_name``): ``load_balance`` (the MoE routers), and those of the
        methods' attached modules (``sparsity``, ``ponder``, ...)."""
        losses = {}
        for module in self.modules():
            name, value = getattr(module, "aux_loss_name", None), getattr(module, "aux_loss", None)
            if name is not None and value is not None:
                losses[name] = losses[name] + value if name in losses else value
        return losses

    def parameter_counts(self) -> dict:
        """Total trainable parameters (shared ones once) and those outside the embeddings and head."""
        unique = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in unique.values())
        embedding = {id(_stored_weight(m)) for m in (self.token_embedding, self.position_embedding, self.lm_head)
                     if m is not None}
        non_embedding = sum(p.numel() for i, p in unique.items() if i not in embedding)
        return {"total": total, "non_embedding": non_embedding}

    def size_mb(self) -> float:
        """Parameter and buffer bytes (shared parameters once), in MiB."""
        unique = {id(p): p for p in self.parameters()}
        nbytes = sum(p.numel() * p.element_size() for p in unique.values())
        nbytes += sum(b.numel() * b.element_size() for b in self.buffers())
        return nbytes / 2**20


def _stored_weight(module: nn.Module):
    """The parameter behind ``module.weight``: under a parametrization (pruning's mask,
    quantization's fake-quant) ``weight`` is computed and the parameter is ``original``."""
    parametrizations = getattr(module, "parametrizations", None)
    if parametrizations is not None and "weight" in parametrizations:
        return parametrizations.weight.original
    return module.weight


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
