"""``use_pruning``: scheduled magnitude pruning, removal of rarely used experts, a sparse export.

What it does: every weight matrix of the model (the blocks' linear layers, the token embedding
and, when untied, the LM head; not the position embedding, norms or biases) gets a 0/1 mask,
applied as a parametrization (``torch.nn.utils.parametrize``: the forward reads ``W * mask``, so
a pruned weight gets no gradient and stays zero). Between ``pruning_start_fraction`` and
``pruning_end_fraction`` of the training steps, every ``pruning_interval`` steps, each matrix's
smallest-magnitude surviving weights are masked so that its sparsity follows Zhu and Gupta's
cubic schedule ``s_t = s_f (1 - (1 - p)^3)`` (``p`` the progress through the window) up to
``pruning_target_sparsity``; the remaining steps train the pruned model. At the end of the
window, experts that received less than ``expert_removal_threshold`` of the tokens routed in
their block since pruning began are removed (the router can no longer choose them; their
weights leave the export); the most used expert of a block always stays. (A mask as a
parametrization rather than ``torch.nn.utils.prune``'s hooks, so that it composes with the
quantization method's fake-quant parametrization on the same weights.)

The export (``resnetbk.methods.export``) stores each mostly-zero matrix sparse (a packed bitmask
and the surviving values); its size on disk is the model size reported.

Records: the sparsity per matrix and overall, non-zero parameters, experts removed, the export's
size on disk against the dense export's.

Measured effect (``results/ablation_quick``, quick preset, 2-core CPU): 75% sparsity, 1.14 M
of 4.54 M parameters non-zero, the bitmask-sparse export 4.95 MiB against 17.34 MiB (3.50x
smaller; claimed 4x: at 75% sparsity a bitmask export cannot reach it, ~80% would); +37.7% test
perplexity when the pruning happens within 150 steps. No expert fell under the 5% routing
threshold. Every Linear is pruned, including small control units (routers, ACT halting units,
confidence heads): with all methods at once and 75 steps this coincided with a collapse
(``results/ablation_quick/README.md``).

Paper: Zhu and Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for
model compression" (gradual magnitude pruning); Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks"; expert pruning by routing frequency as in Chen et
al. 2022, "Task-Specific Expert Pruning for Sparse Mixture-of-Experts".
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..models.resnet_bk import MoEFeedForward
from .base import Method, check_int, check_number
from .export import describe_export, effective_state_dict
from .verdict import Factor, judge


class WeightMask(nn.Module):
    """A parametrization ``W -> W * mask`` with the mask as a buffer (1 = kept)."""

    def __init__(self, shape):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))

    def forward(self, weight):
        return weight * self.mask.to(weight.dtype)


def prunable(model) -> dict:
    """Name -> module whose ``weight`` is pruned: the blocks' (and methods') linear layers, the
    token embedding and the LM head; with tied embeddings neither of those two (a mask on one
    would not reach the other's reads of the shared matrix)."""
    chosen = {}
    for name, module in model.named_modules():
        if name in ("lm_head", "token_embedding") and model.options.tie_embeddings:
            continue
        if isinstance(module, (nn.Linear, nn.Embedding)) and name != "position_embedding":
            chosen[name] = module
    return chosen


def masks(model) -> dict:
    """Name -> the ``WeightMask`` of each pruned module."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, WeightMask):
                    out[name] = p
    return out


def scheduled_sparsity(step: int, total_steps: int, start: float, end: float, target: float) -> float:
    """Zhu and Gupta's cubic schedule: 0 before ``start``, ``target`` from ``end`` (fractions of the steps)."""
    first, last = start * total_steps, end * total_steps
    if step < first:
        return 0.0
    if step >= last or last <= first:
        return target
    progress = (step - first) / (last - first)
    return target * (1 - (1 - progress) ** 3)


@torch.no_grad()
def prune_to(module: nn.Module, mask: WeightMask, sparsity: float) -> None:
    """Mask the smallest-magnitude surviving weights until ``sparsity`` of them are masked
    (masks only grow: a pruned weight stays pruned)."""
    weight = module.parametrizations.weight.original
    want = int(round(sparsity * weight.numel()))
    have = int((mask.mask == 0).sum())
    if want <= have:
        return
    scores = weight.abs().flatten().clone()
    scores[mask.mask.flatten() == 0] = -1.0  # already pruned: first in line, not counted again
    drop = torch.topk(scores, want, largest=False).indices
    mask.mask.view(-1)[drop] = 0.0


class ExpertRouting(nn.Module):
    """Pruning's record of one MoE's routing, attached beside it (``moe.expert_routing``): the
    tokens routed to each expert in training, and which experts are still alive. Its hook on the
    router masks a removed expert's logit, so that it can no longer be chosen."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.register_buffer("expert_alive", torch.ones(num_experts, dtype=torch.bool))
        self.register_buffer("routed_tokens", torch.zeros(num_experts))

    def on_router_output(self, router, args, logits):
        if not bool(self.expert_alive.all()):
            logits = logits.masked_fill(~self.expert_alive, float("-inf"))
        if router.training and logits.shape[0]:
            chosen = logits.argmax(dim=-1)  # the MoE's top-1 choice (its softmax keeps the order)
            self.routed_tokens += torch.bincount(chosen, minlength=len(self.expert_alive)).to(self.routed_tokens.dtype)
        return logits


def _routings(model) -> dict:
    """MoE name -> its ``ExpertRouting``."""
    return {name: m.expert_routing for name, m in model.named_modules() if isinstance(m, MoEFeedForward)
            and getattr(m, "expert_routing", None) is not None}


def removed_expert_prefixes(model) -> list:
    """``"blocks.<i>.moe.experts.<e>."`` of every expert the pruning removed."""
    prefixes = []
    for name, routing in _routings(model).items():
        prefixes += [f"{name}.experts.{e}." for e, alive in enumerate(routing.expert_alive.tolist()) if not alive]
    return prefixes


def sparsity_figures(model) -> dict:
    per = {name: float((m.mask == 0).float().mean()) for name, m in masks(model).items()}
    zeros = sum(int((m.mask == 0).sum()) for m in masks(model).values())
    total = sum(m.mask.numel() for m in masks(model).values())
    parameters = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    prefixes = tuple(removed_expert_prefixes(model))
    state = effective_state_dict(model)
    removed_nonzero = sum(int((v != 0).sum()) for k, v in state.items() if k.startswith(prefixes)) if prefixes else 0
    return {"sparsity_by_matrix": per, "sparsity_of_pruned_matrices": zeros / max(total, 1),
            "parameters": parameters, "nonzero_parameters": parameters - zeros - removed_nonzero}


class Pruning(Method):
    flag = "use_pruning"
    claim = "4x model size"
    acts_on = "the weight matrices (magnitude masks) and the MoE experts (removal)"
    paper = "Zhu and Gupta 2017, To prune, or not to prune (gradual magnitude pruning)"
    hyperparameters = {"pruning_target_sparsity": 0.75, "pruning_start_fraction": 0.2, "pruning_end_fraction": 0.8,
                       "pruning_interval": 10, "expert_removal_threshold": 0.05}

    @classmethod
    def validate(cls, config) -> None:
        check_number(cls.settings_of(config), "pruning_target_sparsity", low=0.0, high=1.0, high_open=True)
        check_number(cls.settings_of(config), "pruning_start_fraction", low=0.0, high=1.0)
        check_number(cls.settings_of(config), "pruning_end_fraction", low=0.0, high=1.0)
        if cls.settings_of(config).pruning_end_fraction < cls.settings_of(config).pruning_start_fraction:
            raise ValueError(f"pruning_end_fraction: expected at least pruning_start_fraction = "
                             f"{cls.settings_of(config).pruning_start_fraction}, got {cls.settings_of(config).pruning_end_fraction}")
        check_int(cls.settings_of(config), "pruning_interval", low=1)
        check_number(cls.settings_of(config), "expert_removal_threshold", low=0.0, high=1.0)

    #: Every linear layer is pruned, the other methods' included: they attach first (quantization
    #: too, so that the mask applies to the fake-quantized weight).
    attach_after = ("use_koopman", "use_physics_informed", "use_act", "use_multi_scale", "use_sparse_bk",
                    "use_early_exit", "use_spectral_z", "use_quantization")

    @classmethod
    def attach(cls, model, config) -> None:
        for module in prunable(model).values():
            parametrize.register_parametrization(module, "weight", WeightMask(module.weight.shape))
        for module in model.modules():  # every MoE: its experts can be removed
            if isinstance(module, MoEFeedForward):
                module.expert_routing = ExpertRouting(len(module.experts))
                module.router.register_forward_hook(module.expert_routing.on_router_output)

    def on_after_optimizer_step(self, state) -> None:
        step, total = state.progress.step, state.total_steps
        end_step = max(1, math.ceil(self.settings.pruning_end_fraction * total))
        if step % self.settings.pruning_interval == 0 or step == end_step:
            sparsity = scheduled_sparsity(step, total, self.settings.pruning_start_fraction, self.settings.pruning_end_fraction,
                                          self.settings.pruning_target_sparsity)
            if sparsity > 0:
                found = prunable(state.model)
                for name, mask in masks(state.model).items():
                    prune_to(found[name], mask, sparsity)
        if step < self.settings.pruning_start_fraction * total:  # routing is counted from the window's start
            for routing in _routings(state.model).values():
                routing.routed_tokens.zero_()
        if step == end_step:
            self._remove_experts(state)

    def _remove_experts(self, state) -> None:
        removed = []
        for name, routing in _routings(state.model).items():
            counts = routing.routed_tokens
            share = counts / counts.sum().clamp_min(1)
            keep = share >= self.settings.expert_removal_threshold
            keep[int(share.argmax())] = True
            for e in (~keep & routing.expert_alive).nonzero().flatten().tolist():
                removed.append({"block": name, "expert": e, "share_of_tokens": float(share[e])})
            routing.expert_alive &= keep
        figures = state.figures.setdefault(self.flag, {})
        figures["experts_removed"] = removed
        figures["routing_share_at_removal"] = {
            name: (r.routed_tokens / r.routed_tokens.sum().clamp_min(1)).tolist()
            for name, r in _routings(state.model).items()}

    def on_export(self, state) -> None:
        figures = state.figures.setdefault(self.flag, {})
        figures.update(sparsity_figures(state.model))
        figures.setdefault("experts_removed", [])
        # The exported file (methods.export.Exporter) leaves out the removed experts' parameters.
        prefixes = tuple(removed_expert_prefixes(state.model))
        removed = tuple(k for k in effective_state_dict(state.model) if prefixes and k.startswith(prefixes))
        state.exports[self.flag] = {"removed": removed}

    @classmethod
    def assess(cls, row):
        figures = row.figures
        export = figures.get("export")
        if not export:
            return "-", "not measured"
        ratio, size = describe_export(export)
        own = (f"sparsity {100 * figures['sparsity_of_pruned_matrices']:.0f}% of the pruned matrices, "
               f"{figures['nonzero_parameters']:,} of {figures['parameters']:,} parameters non-zero, "
               f"{len(figures['experts_removed'])} expert(s) removed; {size}")
        return own, judge([Factor("export size", ratio, 4)], row.test_perplexity_change_percent,
                          noise_percent=row.perplexity_noise_percent)
