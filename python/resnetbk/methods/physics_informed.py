"""``use_physics_informed``: an energy-conservation loss across the blocks.

What it does: the residual stack is read as a discrete-time dynamical system: block ``l`` moves
the state from ``h_l`` to ``h_{l+1}`` with momentum ``p_l = h_{l+1} - h_l``. Two small MLPs
(``d -> physics_hidden -> 1``, softplus outputs) give a kinetic energy ``T(p_l)`` and a potential
energy ``V(h_{l+1})`` per position; the loss term ``energy`` is the mean squared change of
``E_l = T(p_l) + V(h_{l+1})`` between consecutive blocks (pairs at the same length), with a
learnable weight in the homoscedastic-uncertainty form ``exp(-s) L + s`` (Kendall et al. 2018),
``exp(-s)`` starting at ``physics_weight_init``: the weight can fall where the constraint does
not help, without collapsing to 0 for free. The energy MLPs are trained with the model and are
not used at inference.

Records: the energy loss per epoch (in ``epoch_aux_losses``) and the learned weight; with a
validation curve, the steps to the baseline's perplexity (the claim is about training steps).

Measured effect (``results/ablation_quick``, quick preset, 2-core CPU): never reached the
baseline's best validation perplexity within the 150 steps the baseline needed (its best 582
against 570); test perplexity +2.0% (claimed: 10x fewer steps: not borne out).

Paper: Greydanus et al. 2019, "Hamiltonian Neural Networks" (learned energies, conservation);
residual networks as discretised dynamics: Chen et al. 2018, "Neural Ordinary Differential
Equations"; the learnable loss weight: Kendall, Gal and Cipolla 2018, "Multi-Task Learning Using
Uncertainty to Weigh Losses".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, check_int, check_number
from .block_states import track_block_states
from .curves import assess_steps


class Energies(nn.Module):
    """Kinetic ``T(p)`` and potential ``V(h)``, each a small MLP with a softplus output."""

    def __init__(self, d_model: int, hidden: int, weight_init: float):
        super().__init__()
        self.kinetic = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.potential = nn.Sequential(nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.log_inverse_weight = nn.Parameter(torch.tensor(-math.log(weight_init)))  # s, with weight exp(-s)

    def energy(self, before, after):
        return (F.softplus(self.kinetic(after - before)) + F.softplus(self.potential(after))).squeeze(-1)

    def conservation_loss(self, pairs: list):
        """Mean squared energy change between successive blocks at the same length (with the
        multi-scale option, the full-length blocks around the shortened middle are successive
        too), or None when no two blocks share a length."""
        by_length: dict = {}
        for a, b in pairs:
            by_length.setdefault(tuple(a.shape), []).append(self.energy(a.float(), b.float()))
        terms = [(e2 - e1).pow(2).mean() for group in by_length.values() for e1, e2 in zip(group, group[1:])]
        return torch.stack(terms).mean() if terms else None


class PhysicsInformed(Method):
    flag = "use_physics_informed"
    claim = "10x fewer training steps"
    acts_on = "the training loss (an energy-conservation term across the blocks; two small energy MLPs)"
    paper = "Greydanus et al. 2019, Hamiltonian Neural Networks; Kendall et al. 2018 (learnable loss weight)"
    hyperparameters = {"physics_hidden": 32, "physics_weight_init": 0.1}

    @classmethod
    def validate(cls, config) -> None:
        check_int(cls.settings_of(config), "physics_hidden", low=1, expected="a positive integer")
        check_number(cls.settings_of(config), "physics_weight_init", low=0.0, low_open=True)

    @classmethod
    def attach(cls, model, config) -> None:
        model.energies = Energies(config.model.d_model, cls.settings_of(config).physics_hidden, cls.settings_of(config).physics_weight_init)
        track_block_states(model)

    def on_loss(self, state) -> None:
        energies = state.model.energies
        loss = energies.conservation_loss(state.model.block_states)
        if loss is None:
            return
        s = energies.log_inverse_weight
        state.loss_terms["energy"] = torch.exp(-s) * loss + s

    def on_epoch_end(self, state) -> None:
        figures = state.figures.setdefault(self.flag, {})
        figures.setdefault("loss_weight", []).append(float(torch.exp(-state.model.energies.log_inverse_weight.detach())))

    @classmethod
    def assess(cls, row):
        return assess_steps(row, claimed=10.0)
