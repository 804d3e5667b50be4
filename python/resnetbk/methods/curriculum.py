"""``use_curriculum``: sequence-length warm-up, and optionally easy windows first.

What it does: for the first ``curriculum_fraction`` of the training steps, each batch's windows
are cut into shorter sequences: the length grows linearly from ``curriculum_start_length`` to
``n_seq`` (rounded down to a multiple of 8, as Composer's SeqLengthWarmup does), and a batch
``(B, N)`` becomes ``(B * (N // L), L)``, so a step sees the same tokens (the ``N mod L``
tokens at the end of each row that do not fill a sequence are left out, and counted). Short
sequences are cheaper where the cost grows with length (attention) and give the early, noisy
steps an easier task. With ``curriculum_order: "unigram"`` the first epoch's windows also go
from easy to hard: by the mean unigram surprisal of their targets under the training split's
word frequencies (the later epochs are shuffled as usual).

Records: the length schedule actually used (steps at each length), the tokens left out, and,
with a validation curve (``valid_curve_interval``), the steps and time to the baseline's
perplexity (the ablation reads them).

Measured effect (``results/ablation-epoch``: one epoch, 510 steps, seed 42, 2 CPU threads): never
reached the baseline's best validation perplexity (367.0) within the 510 steps (its best 373.1);
test perplexity +1.6%; the claim (30% fewer steps) is not borne out.

Paper: Li, Zhang and He 2021, "The Stability-Efficiency Dilemma: Investigating Sequence Length
Warmup for Training GPT Models"; MosaicML Composer's SeqLengthWarmup (about 1.5x on GPT-2 125M);
ordering by difficulty: Bengio et al. 2009, "Curriculum Learning", with unigram difficulty as in
Platanios et al. 2019, "Competence-based Curriculum Learning for Neural Machine Translation".
"""

from __future__ import annotations

import torch

from .. import data as wt2
from .base import Method, check_number
from .curves import assess_steps

ORDERS = ("none", "unigram")
LENGTH_STEP = 8


def warmup_length(step: int, total_steps: int, start: int, full: int, fraction: float) -> int:
    """The sequence length at ``step``: linear from ``start`` to ``full`` over ``fraction`` of the steps."""
    warm = fraction * total_steps
    if step >= warm or start >= full:
        return full
    length = start + (full - start) * step / warm
    return max(start, min(full, int(length) // LENGTH_STEP * LENGTH_STEP))


def cut_into_sequences(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, N) -> (B * (N // length), length)``: each row cut into consecutive sequences."""
    b, n = x.shape
    k = n // length
    return x[:, :k * length].reshape(b * k, length)


def unigram_difficulty(train_targets: torch.Tensor, n_seq: int, vocab_size: int) -> torch.Tensor:
    """Per window of the training streams: the mean unigram surprisal ``-log p(word)`` of its
    targets, with ``p`` the training split's word frequencies (add-one smoothed)."""
    valid = train_targets[train_targets != wt2.IGNORE_INDEX]
    counts = torch.bincount(valid, minlength=vocab_size).double() + 1.0
    surprisal = -(counts / counts.sum()).log()
    scores = []
    for start in range(0, train_targets.shape[1], n_seq):
        window = train_targets[:, start:start + n_seq]
        kept = window[window != wt2.IGNORE_INDEX]
        scores.append(float(surprisal[kept].mean()) if kept.numel() else 0.0)
    return torch.tensor(scores)


class Curriculum(Method):
    flag = "use_curriculum"
    claim = "30% fewer steps"
    acts_on = "the training sequences' length (and, optionally, the order of the first epoch's windows)"
    paper = ("Li et al. 2021, The Stability-Efficiency Dilemma (sequence length warm-up); Bengio et al. 2009, "
             "Curriculum Learning")
    changes_model = False
    architectures = ("resnet_bk", "transformer")
    hyperparameters = {"curriculum_start_length": 16, "curriculum_fraction": 0.3, "curriculum_order": "none"}

    @classmethod
    def validate(cls, config) -> None:
        value = cls.settings_of(config).curriculum_start_length
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= config.model.n_seq:
            raise ValueError(f"curriculum_start_length: expected an integer in [1, n_seq = {config.model.n_seq}], got {value!r}")
        check_number(cls.settings_of(config), "curriculum_fraction", low=0.0, high=1.0)
        if cls.settings_of(config).curriculum_order not in ORDERS:
            raise ValueError(f"curriculum_order: expected one of {ORDERS}, got {cls.settings_of(config).curriculum_order!r}")

    def on_epoch_start(self, state) -> None:
        if self.settings.curriculum_order == "unigram" and state.progress.epoch == 0:
            scores = unigram_difficulty(state.train_targets, self.config.model.n_seq, state.corpus.vocab_size)
            state.window_order = state.window_order[torch.argsort(scores[state.window_order], stable=True)]

    def on_batch_start(self, state) -> None:
        # Kept in state.figures (checkpointed with the progress), so a resumed run counts on.
        figures = state.figures.setdefault(self.flag, {
            "steps_at_length": {}, "tokens_left_out": 0, "order": self.settings.curriculum_order,
            "warmup_fraction": self.settings.curriculum_fraction})
        n = state.inputs.shape[1]
        length = warmup_length(state.progress.step, state.total_steps, self.settings.curriculum_start_length,
                               self.config.model.n_seq, self.settings.curriculum_fraction)
        if length < n:
            before = int((state.targets != wt2.IGNORE_INDEX).sum())
            state.inputs = cut_into_sequences(state.inputs, length)
            state.targets = cut_into_sequences(state.targets, length)
            figures["tokens_left_out"] += before - int((state.targets != wt2.IGNORE_INDEX).sum())
        else:
            length = n
        counts = figures["steps_at_length"]
        counts[str(length)] = counts.get(str(length), 0) + 1

    @classmethod
    def assess(cls, row):
        return assess_steps(row, claimed=1 / 0.7)  # 30% fewer steps
