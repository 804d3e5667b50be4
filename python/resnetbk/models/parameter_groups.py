"""Which parameters get weight decay: the groups AdamW trains with (and the FLOPs estimate prices)."""

from __future__ import annotations

import torch


def parameter_groups(model: torch.nn.Module, decay_norms_biases_embeddings: bool, weight_decay: float) -> list:
    """AdamW's groups: weight decay on weight matrices only, unless ``decay_norms_biases_embeddings``;
    never on a parameter marked ``_no_weight_decay`` (Mamba's A_log, as in its reference)."""
    embeddings = {id(m.weight) for m in (model.token_embedding, model.position_embedding) if m is not None}
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        plain = p.dim() >= 2 and id(p) not in embeddings and not getattr(p, "_no_weight_decay", False)
        (decay if plain or decay_norms_biases_embeddings else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
