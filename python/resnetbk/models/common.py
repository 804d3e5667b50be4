"""What both language models share: token + learned position embeddings, a stack of residual
blocks, a final LayerNorm and the LM head (optionally tied to the token embedding)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LanguageModel(nn.Module):
    """``blocks`` map ``(B, N, d) -> (B, N, d)``; each may add an auxiliary loss (``aux_loss``)."""

    def __init__(self, vocab_size: int, d_model: int, n_seq: int, blocks: list, dropout: float, tie_embeddings: bool):
        super().__init__()
        self.n_seq = n_seq
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(n_seq, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        self.apply(_init_weights)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, N, vocab)`` for token ids ``(B, N)``, any ``N <= n_seq``."""
        return self.lm_head(self.features(tokens))

    def features(self, tokens: Tensor) -> Tensor:
        """The final-LayerNorm hidden states ``(B, N, d)`` that the LM head reads."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens: expected (batch, length) token ids, got shape {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if not 1 <= n <= self.n_seq:
            raise ValueError(f"tokens: length {n} is outside 1..n_seq = {self.n_seq}")
        positions = torch.arange(n, device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def aux_loss(self) -> Tensor:
        """Sum of the blocks' auxiliary losses from the last forward (0 if none)."""
        losses = [b.aux_loss for b in self.blocks if getattr(b, "aux_loss", None) is not None]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def parameter_counts(self) -> dict:
        """Total trainable parameters (shared ones once) and those outside the embeddings and head."""
        unique = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in unique.values())
        embedding = {id(self.token_embedding.weight), id(self.position_embedding.weight), id(self.lm_head.weight)}
        non_embedding = sum(p.numel() for i, p in unique.items() if i not in embedding)
        return {"total": total, "non_embedding": non_embedding}

    def size_mb(self) -> float:
        """Parameter and buffer bytes (shared parameters once), in MiB."""
        unique = {id(p): p for p in self.parameters()}
        nbytes = sum(p.numel() * p.element_size() for p in unique.values())
        nbytes += sum(b.numel() * b.element_size() for b in self.buffers())
        return nbytes / 2**20


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
