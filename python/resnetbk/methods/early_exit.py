"""``use_early_exit``: confident adaptive language modelling, an exit after every block.

What it does: in training, the state after every block but the last is an exit: its logits come
from the shared final norm and LM head, and the loss term ``exit`` adds the exits' cross-entropies
with CALM's weights (exit ``l`` of ``L`` weighs ``l / sum(1..L)``), times ``exit_loss_weight``,
on a random ``exit_loss_fraction`` of the positions (the vocabulary-sized head is most of a
step's cost; the sampled mean is an unbiased estimate of the full one). A cheap confidence head
per exit (``d -> 1`` on the detached state) learns, by binary cross-entropy (term
``exit_confidence``), whether the exit's prediction already equals the final block's. At
evaluation with a threshold, a token leaves at the first exit whose confidence passes it and its
state is carried forward unchanged to the skipped blocks, which skip its feed-forward and read-out
work (``methods.depth``, attached as the model's ``depth``). The reported validation and test
perplexities use every block.

The threshold is calibrated as CALM does, on held-out tokens: the first ``method_eval_tokens``
of the validation split after the method's evaluation slice are the calibration slice; the
chosen threshold is the lowest of ``exit_thresholds`` whose calibration perplexity stays within
``exit_tolerance_percent`` of every block's (CALM's textual/risk consistency, here with
perplexity as the risk, without its Learn-then-Test statistics). The figures give, on the
evaluation slice, every block's perplexity and, for the calibrated threshold and every listed
one, perplexity, mean exit block and forward FLOPs per token.

Defaults: ``exit_loss_weight`` 0.2 (the exits' losses through the shared head weighed 1.0 before,
about 3 nats of extra loss that pulled the shared head towards the shallow exits; CALM trains
its exits with weights that sum to 1 beside the final loss), thresholds from 0.5 to 0.99.

With ACT (``use_act``) both stop tokens: a token stops at the first of its halting and a
confident exit, and an exit counts for ACT as halting there (its remainder goes to the exit's
state). Together they are defined; the figures show how often each fires.

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): the
exits trained at weight 0.2 cost nothing in perplexity with every block (test -0.3%) but the
training step 1.97x forward FLOPs (the exits' losses through the shared head). At the threshold
calibrated on held-out validation tokens (0.7: the most exiting within 2% of the all-blocks
perplexity) tokens leave after 1.71 of 4 blocks on average, the blocks' forward FLOPs 0.45x, at
valid perplexity 372.9 against 365.4 with every block; the whole forward, LM head included, is
0.98x. No figure was claimed.

Paper: Schuster et al. 2022, "Confident Adaptive Language Modeling" (CALM).
"""

import torch
import torch.nn.functional as F

from .. import data as wt2
from .base import Method, check_number
from .depth import attached_depth
from .evaluation import record_evaluation


class EarlyExit(Method):
    flag = "use_early_exit"
    claim = "variable"
    version = 2  # the fair-methods form (issue 22)
    acts_on = "the depth each token runs at evaluation (exits, confidence heads)"
    paper = "Schuster et al. 2022, Confident Adaptive Language Modeling (CALM)"
    hyperparameters = {"exit_loss_weight": 0.2, "exit_loss_fraction": 0.25,
                       "exit_thresholds": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99), "exit_tolerance_percent": 2.0}
    attach_after = ("use_multi_scale",)  # the exits follow the model's stages

    @classmethod
    def validate(cls, config) -> None:
        check_number(cls.settings_of(config), "exit_loss_weight", low=0.0)
        check_number(cls.settings_of(config), "exit_loss_fraction", low=0.0, high=1.0, low_open=True)
        thresholds = cls.settings_of(config).exit_thresholds
        if (not isinstance(thresholds, (list, tuple)) or not thresholds
                or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in thresholds)):
            raise ValueError(f"exit_thresholds: expected a non-empty list of numbers in (0, 1], got {thresholds!r}")
        check_number(cls.settings_of(config), "exit_tolerance_percent", low=0.0)

    @classmethod
    def attach(cls, model, config) -> None:
        model.init_attached(attached_depth(model).confidence_heads())

    def on_loss(self, state) -> None:
        model = state.model
        exits = model.depth.exit_states
        if not exits:
            return
        targets = state.targets.reshape(-1)
        positions = torch.nonzero(targets != wt2.IGNORE_INDEX, as_tuple=True)[0]
        keep = max(1, round(self.settings.exit_loss_fraction * positions.numel()))
        if keep < positions.numel():
            positions = positions[torch.randperm(positions.numel(), device=positions.device)[:keep]]
        with torch.no_grad():  # the final prediction at the sampled positions (the fused head keeps no logits)
            final_prediction = model.lm_head(state.hidden.reshape(-1, state.hidden.shape[-1])[positions]).argmax(-1)
        n_exits = len(exits) + 1
        scale = sum(range(1, n_exits + 1))
        exit_loss, confidence_loss = 0.0, 0.0
        for i, state_i in enumerate(exits):
            hidden = state_i.reshape(-1, state_i.shape[-1])[positions]
            logits = model.lm_head(model.final_norm(hidden)).float()
            exit_loss = exit_loss + (i + 1) / scale * F.cross_entropy(logits, targets[positions])
            agrees = (logits.argmax(-1) == final_prediction).float()
            confidence = model.depth.confidence[i](hidden.detach()).float().squeeze(-1)
            confidence_loss = confidence_loss + F.binary_cross_entropy_with_logits(confidence, agrees)
        state.loss_terms["exit"] = self.settings.exit_loss_weight * exit_loss
        state.loss_terms["exit_confidence"] = confidence_loss / len(exits)

    def on_evaluation(self, state) -> None:
        depth = state.model.depth
        valid, limit = state.corpus.valid, state.config.method_eval_tokens
        held_out = valid.numel() - limit >= 2  # else (a validation split this short) its second half
        calibration_tokens = valid[limit:] if held_out else valid[valid.numel() // 2:]
        figures = {"all_blocks": record_evaluation(state, blocks=True), "thresholds": {}, "calibration": {},
                   "calibration_held_out": held_out}
        try:
            depth.exit_threshold = None
            full = record_evaluation(state, blocks=True, tokens=calibration_tokens)["perplexity"]
            for threshold in sorted(self.settings.exit_thresholds):
                depth.exit_threshold = float(threshold)
                figures["calibration"][str(threshold)] = record_evaluation(state, blocks=True, tokens=calibration_tokens)
                figures["thresholds"][str(threshold)] = record_evaluation(state, blocks=True)
        finally:
            depth.exit_threshold = None
        figures["calibration_all_blocks_perplexity"] = full
        figures["calibrated_threshold"] = calibrated_threshold(figures["calibration"], full,
                                                               self.settings.exit_tolerance_percent)
        state.figures[self.flag] = figures

    @classmethod
    def assess(cls, row):
        figures = row.figures
        full = figures.get("all_blocks")
        if not full:
            return "-", "not measured"

        def words(threshold, f):
            blocks = (f"; blocks' FLOPs {f['blocks_forward_flops_per_token'] / full['blocks_forward_flops_per_token']:.2f}x"
                      if full.get("blocks_forward_flops_per_token") else "")
            return (f"t={threshold}: ppl {f['perplexity']:.1f}, exit block {f['mean_blocks_per_token']:.2f}, "
                    f"FLOPs {f['forward_flops_per_token'] / full['forward_flops_per_token']:.2f}x{blocks}")

        chosen = figures.get("calibrated_threshold")
        calibrated = (f"calibrated {words(chosen, figures['thresholds'][chosen])}" if chosen is not None else
                      "no threshold kept the calibration perplexity within tolerance")
        own = f"all blocks: ppl {full['perplexity']:.1f}; {calibrated}; " + "; ".join(
            words(t, f) for t, f in figures["thresholds"].items() if t != chosen)
        return own, "no figure was claimed ('variable'); the table gives the measured trade-off at the calibrated threshold"


def calibrated_threshold(calibration: dict, full_perplexity: float, tolerance_percent: float):
    """The lowest threshold (as its key) whose calibration perplexity is within
    ``tolerance_percent`` of every block's, or None."""
    allowed = full_perplexity * (1 + tolerance_percent / 100)
    within = [t for t, f in calibration.items() if f["perplexity"] <= allowed]
    return min(within, key=float) if within else None
