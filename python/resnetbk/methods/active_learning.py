"""``use_active_learning``: each epoch, train only on the windows the current model finds hardest.

What it does: at the start of every epoch the current model scores every training window (a
forward without gradients, in evaluation mode: the window's mean next-token loss) and the epoch
trains on the ``active_learning_fraction`` with the highest loss, in a shuffled order. The
learning-rate schedule is planned for that many steps. The scoring pass is training work: its
wall time is part of the training time, and its FLOPs are recorded here (``scoring_flops``,
priced from one traced window of each shape), so the ablation can compare at equal total compute.

Records: per epoch, the windows scored and kept, the mean loss of the kept and of the dropped
windows, the scoring time and FLOPs; the ablation compares the perplexity at equal tokens seen
and at equal total compute with the baseline's validation curve.

Measured effect (``results/ablation_quick``, quick preset, 2-core CPU): in a one-epoch run the
untrained model ranks the windows (kept and dropped windows' mean loss 10.419 and 10.415), so
the epoch trains on a random half: valid ppl 886 after 0.47x the data, against the baseline's
733 at equal tokens and 591 at equal compute (scoring included); test perplexity +53.9%
(claimed 50% less data: not borne out). Scoring once per epoch needs several epochs to mean
anything; per-batch selection (Selective Backprop) would not.

Paper: loss-based selection of training examples: Loshchilov and Hutter 2015, "Online Batch
Selection for Faster Training of Neural Networks"; Jiang et al. 2019, "Accelerating Deep Learning
by Focusing on the Biggest Losers" (Selective Backprop). Mindermann et al. 2022 (RHO-LOSS) show
that the plain highest-loss rule also picks noisy, unlearnable examples: a known weakness.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch

from .. import data as wt2
from ..flops import FlopsTracer
from ..train.evaluate import window_nlls
from .base import Method, check_number
from .curves import interpolate
from .verdict import Factor, judge


def window_losses(state) -> tuple[torch.Tensor, int]:
    """The current model's mean next-token loss on every training window (evaluation mode, no
    gradients), and the FLOPs of that pass. The FLOPs are priced from one traced window of each
    window shape, times the windows of that shape: the tracer costs many times the forward
    (tracing every window was 95% of a quick-preset epoch), and every window of a shape runs the
    same ops (data-dependent parts, such as sparse gates or ACT halting, are priced at the traced
    window's rate)."""
    windows_of_shape: Counter = Counter()
    tracers: dict = {}

    def tracer_for(x):
        shape = tuple(x.shape)
        windows_of_shape[shape] += 1
        if shape in tracers:
            return None
        tracers[shape] = FlopsTracer()
        return tracers[shape]

    windows = wt2.windows(state.train_inputs, state.train_targets, state.config.model.n_seq)
    losses = [nll / max(count, 1) for nll, count, _ in window_nlls(
        state.model, windows, state.device, fused_head=state.config.fused_head, context=state.forward_context,
        tracer_for=tracer_for)]
    flops = sum(tracers[shape].report()["total"] * count for shape, count in windows_of_shape.items())
    return torch.tensor(losses), flops


class ActiveLearning(Method):
    flag = "use_active_learning"
    claim = "50% less data"
    acts_on = "which training windows each epoch uses (the hardest by the current model's loss)"
    paper = ("Loshchilov and Hutter 2015, Online Batch Selection; Jiang et al. 2019, Selective Backprop "
             "(loss-based selection)")
    changes_model = False
    architectures = ("resnet_bk", "transformer")
    hyperparameters = {"active_learning_fraction": 0.5}

    @classmethod
    def validate(cls, config) -> None:
        check_number(cls.settings_of(config), "active_learning_fraction", low=0.0, high=1.0, low_open=True)

    @classmethod
    def windows_per_epoch(cls, config, windows: int) -> int:
        return max(1, math.ceil(cls.settings_of(config).active_learning_fraction * windows))

    def on_epoch_start(self, state) -> None:
        start = time.perf_counter()
        losses, scoring_flops = window_losses(state)
        keep = self.windows_per_epoch(self.config, losses.numel())
        hardest = torch.argsort(losses, descending=True, stable=True)[:keep]
        chosen = torch.zeros(losses.numel(), dtype=torch.bool)
        chosen[hardest] = True
        dropped = ~chosen
        # Keep the epoch's shuffled order among the kept windows.
        state.window_order = state.window_order[chosen[state.window_order]]
        figures = state.figures.setdefault(self.flag, {"fraction": self.settings.active_learning_fraction, "epochs": []})
        figures["epochs"].append({
            "windows_scored": losses.numel(), "windows_kept": keep,
            "mean_loss_kept": float(losses[hardest].mean()),
            "mean_loss_dropped": float(losses[dropped].mean()) if bool(dropped.any()) else math.nan,
            "scoring_seconds": time.perf_counter() - start, "scoring_flops": scoring_flops,
        })
        figures["scoring_flops"] = sum(e["scoring_flops"] for e in figures["epochs"])
        figures["scoring_seconds"] = sum(e["scoring_seconds"] for e in figures["epochs"])

    @classmethod
    def assess(cls, row):
        figures, mine, base = row.figures, row.valid_curve or [], row.baseline_valid_curve or []
        if not figures or not mine or not base:
            return "-", "not measured (needs validation curves: set valid_curve_interval)"
        final = mine[-1]
        at_tokens = interpolate(base, "tokens", final["tokens"])
        # Equal total compute: the baseline's curve at the training FLOPs this run spent, scoring included.
        per_step_base, per_step = row.baseline_flops_per_step, row.flops_per_step
        at_compute = None
        if per_step_base and per_step:
            compute = per_step * final["step"] + figures.get("scoring_flops", 0)
            at_compute = interpolate([{**p, "flops": per_step_base * p["step"]} for p in base], "flops", compute)
        base_final = base[-1]["perplexity"]
        words = [f"valid ppl {final['perplexity']:.1f} after {final['tokens']:,} tokens "
                 f"({final['tokens'] / max(base[-1]['tokens'], 1):.2f}x the baseline's data)"]
        words.append(f"baseline at equal tokens {at_tokens:.1f}" if at_tokens is not None else
                     "baseline at equal tokens: outside its curve")
        words.append(f"at equal compute (scoring included) {at_compute:.1f}" if at_compute is not None else
                     "at equal compute: outside the baseline's curve")
        words.append(f"final valid ppl {final['perplexity']:.1f} against the baseline's {base_final:.1f}")
        less = Factor("less data (the baseline's training tokens over this row's)",
                      base[-1]["tokens"] / max(final["tokens"], 1), 2)
        return "; ".join(words), judge([less], row.test_perplexity_change_percent,
                                       noise_percent=row.perplexity_noise_percent)
