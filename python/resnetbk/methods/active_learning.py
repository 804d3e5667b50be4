"""``use_active_learning``: Selective Backprop, per batch: the gradient of each step comes from the rows its model finds hard.

What it does: at the start of every step the current model scores each row of the batch (one
sequence of ``n_seq`` tokens: a forward without gradients, in evaluation mode, the row's mean
next-token loss). Selective Backprop's rule (Jiang et al. 2019) then keeps a row with
probability ``percentile ** beta``, its loss's rank percentile among the batch's rows, with
``beta = 1 / active_learning_fraction - 1`` so that the expected share kept is about
``active_learning_fraction``; at least one row is kept. The random control keeps that many rows
(``fraction`` of the batch, rounded) at random. (The paper takes the percentile among a
history of recent losses; within the batch the rule keeps no state and its draws come from a
generator seeded by the step, so an interrupted run resumes exactly.) The step runs forward and backward on the
kept rows only. The number of optimizer steps and the learning-rate schedule are the baseline's:
what is saved is backward (and forward) work on the rows left out, not steps. With
``active_learning_selection: random`` each row is kept with probability
``active_learning_fraction`` instead: the control of the same budget (the ablation's
``random_selection`` row).

The scoring forward is training work: its wall time is part of the training time, and its FLOPs
are recorded (``scoring_flops``: each epoch's first scoring pass traced, times its steps), so
the ablation compares at equal total compute.

Records: rows scored and kept (and their share), the mean scoring loss of the kept and the
left-out rows, the scoring time and FLOPs. The verdict (``methods.verdict``): the claimed 50%
less data is the rows backpropagated (the factor is rows scored over rows kept), and holds only
with the test perplexity within the margin of the baseline's.

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): half
the rows backpropagated at the baseline's 510 steps (mean scoring loss of the kept rows 6.926, of
the left-out 6.592: the rule does pick the harder rows), training compute 0.83x the baseline's with
the scoring counted, and test perplexity +17.1%: not borne out. The random half of the same budget
(``random_selection``) is +14.8%: at this budget, choosing the rows by their loss is worse than
choosing them at random.

The earlier form scored whole batches once per epoch with the untrained model (in a one-epoch
run it picked a random half: kept and dropped mean loss 10.419 and 10.415) and halved the
learning-rate schedule with the steps, confounding less data with fewer steps: test perplexity
+53.9% (``results/ablation_quick``).

Paper: Jiang et al. 2019, "Accelerating Deep Learning by Focusing on the Biggest Losers"
(Selective Backprop); loss-based selection: Loshchilov and Hutter 2015, "Online Batch Selection
for Faster Training of Neural Networks". Mindermann et al. 2022 (RHO-LOSS) show that the plain
highest-loss rule also picks noisy, unlearnable examples: a known weakness.
"""

from __future__ import annotations

import math
import time

import torch

from .. import data as wt2
from ..flops import FlopsTracer
from ..validate import check_choice
from .base import Method, check_number
from .verdict import Factor, judge

SELECTIONS = ("loss", "random")


def row_losses(model, inputs: torch.Tensor, targets: torch.Tensor, context) -> torch.Tensor:
    """Each row's mean next-token loss under the current model (evaluation mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), context():
            hidden = model(inputs, features_only=True)
            sums = torch.stack([model.lm_head(hidden[i], targets[i]) for i in range(inputs.shape[0])])
            counts = (targets != wt2.IGNORE_INDEX).sum(dim=1).clamp_min(1)
    finally:
        model.train(was_training)
    return (sums.float() / counts).cpu()  # one host sync for the batch


class ActiveLearning(Method):
    flag = "use_active_learning"
    claim = "50% less data"
    version = 2  # the fair-methods form (issue 22)
    acts_on = "which rows of each batch the step trains on (Selective Backprop: hard rows by the current loss)"
    paper = ("Jiang et al. 2019, Selective Backprop; Loshchilov and Hutter 2015, Online Batch Selection "
             "(loss-based selection)")
    changes_model = False
    architectures = ("resnet_bk", "transformer")
    hyperparameters = {"active_learning_fraction": 0.5, "active_learning_selection": "loss"}

    @classmethod
    def validate(cls, config) -> None:
        settings = cls.settings_of(config)
        check_number(settings, "active_learning_fraction", low=0.0, high=1.0, low_open=True)
        check_choice(settings, "active_learning_selection", SELECTIONS)

    def __init__(self, config):
        super().__init__(config)
        self._scoring_flops_per_step = None

    def keep_mask(self, losses: torch.Tensor, step: int = 0) -> torch.Tensor:
        """Which rows to train on, given their scoring losses (see the module's documentation)."""
        fraction = self.settings.active_learning_fraction
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        draws = torch.rand(losses.numel(), generator=generator)
        n = losses.numel()
        if self.settings.active_learning_selection == "random":
            # The same budget as the rule's expectation, n * fraction rows, drawn at random.
            keep = torch.zeros(n, dtype=torch.bool)
            keep[torch.randperm(n, generator=generator)[:max(1, round(fraction * n))]] = True
        else:
            # The rank percentile (r - 1) / (n - 1) in [0, 1]: E[p ** beta] = 1 / (beta + 1) = fraction
            # (up to the discreteness of n ranks).
            ranks = (losses[None, :] < losses[:, None]).float().sum(dim=1)
            percentile = ranks / max(n - 1, 1)
            keep = draws < percentile.pow(1.0 / fraction - 1.0)
        if not bool(keep.any()):
            keep[int(losses.argmax())] = True
        return keep

    def on_epoch_start(self, state) -> None:
        self._scoring_flops_per_step = None  # priced again each epoch: data-dependent parts (ACT, gates) change

    def on_batch_start(self, state) -> None:
        start = time.perf_counter()
        if self._scoring_flops_per_step is None:  # the epoch's first step (a curriculum's later shapes cost its rate)
            tracer = FlopsTracer()
            with tracer:
                losses = row_losses(state.model, state.inputs, state.targets, state.forward_context)
            self._scoring_flops_per_step = tracer.report()["total"]
        else:
            losses = row_losses(state.model, state.inputs, state.targets, state.forward_context)
        keep = self.keep_mask(losses, state.progress.step)
        rows = keep.nonzero(as_tuple=True)[0].to(state.inputs.device)
        state.inputs, state.targets = state.inputs[rows], state.targets[rows]
        figures = state.figures.setdefault(self.flag, {
            "fraction": self.settings.active_learning_fraction, "selection": self.settings.active_learning_selection,
            "rows_scored": 0, "rows_kept": 0, "scoring_seconds": 0.0, "scoring_flops": 0,
            "loss_kept_sum": 0.0, "loss_left_out_sum": 0.0})
        figures["rows_scored"] += losses.numel()
        figures["rows_kept"] += int(keep.sum())
        figures["loss_kept_sum"] += float(losses[keep].sum())
        figures["loss_left_out_sum"] += float(losses[~keep].sum())
        figures["share_kept"] = figures["rows_kept"] / figures["rows_scored"]
        left_out = figures["rows_scored"] - figures["rows_kept"]
        figures["mean_loss_kept"] = figures["loss_kept_sum"] / figures["rows_kept"]
        figures["mean_loss_left_out"] = figures["loss_left_out_sum"] / left_out if left_out else math.nan
        figures["scoring_flops"] += self._scoring_flops_per_step
        elapsed = time.perf_counter() - start
        figures["scoring_seconds"] += elapsed
        # Training time: the step's own clock starts after BATCH_START, so the scoring is added here
        # (to the throughput's time too when this step is one the FLOPs tracer leaves alone).
        state.epoch.time += elapsed
        if getattr(state, "tracer", None) is None:
            state.epoch.untraced_time += elapsed

    @classmethod
    def assess(cls, row):
        figures = row.figures
        if not figures.get("rows_kept"):
            return "-", "not measured"
        steps_flops = (row.flops_per_step or 0) * row.steps
        base_flops = (row.baseline_flops_per_step or 0) * row.steps
        compute = (f"training compute {(steps_flops + figures['scoring_flops']) / base_flops:.2f}x the baseline's, "
                   f"scoring included" if base_flops else "training compute not measured")
        own = (f"{100 * figures['share_kept']:.0f}% of the rows backpropagated ({figures['selection']} selection; "
               f"mean scoring loss kept {figures['mean_loss_kept']:.3f}, left out {figures['mean_loss_left_out']:.3f}); "
               f"{compute}; the same {row.steps} steps")
        less = Factor("less data (rows scored over rows backpropagated)", figures["rows_scored"] / figures["rows_kept"], 2)
        return own, judge([less], row.test_perplexity_change_percent, noise_percent=row.perplexity_noise_percent)
