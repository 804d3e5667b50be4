"""Active learning as Selective Backprop: each step scores its batch's rows and trains on the
ones the rule keeps; the steps and the schedule stay the baseline's; the scoring counts as
training time and compute; a random selection of the same budget is its control."""

import pytest
import torch

from helpers_methods import run_training, small_config, synthetic_corpus
from resnetbk import data as wt2
from resnetbk.methods.active_learning import ActiveLearning


def test_the_steps_and_schedule_stay_the_baselines_and_each_step_trains_on_the_kept_rows(tmp_path):
    corpus = synthetic_corpus(train_tokens=2400)
    config = small_config(use_active_learning=True, active_learning_fraction=0.5, epochs=2)
    result = run_training(config, corpus, tmp_path)
    plain = run_training(small_config(epochs=2), corpus, tmp_path, name="plain")
    windows = wt2.num_windows(wt2.streams(corpus.train, 4)[0], 16)
    assert result.steps == plain.steps == 2 * windows  # no step dropped, no schedule halved
    figures = result.methods["use_active_learning"]
    assert figures["rows_scored"] == 4 * result.steps
    assert 0.25 < figures["share_kept"] < 0.75 and figures["rows_kept"] >= result.steps  # at least one row a step
    assert figures["scoring_flops"] > 0 and result.training_time >= figures["scoring_seconds"] > 0
    # Fewer rows through each step than the baseline's (its FLOPs are traced on the kept rows).
    assert result.total_flops_per_step < plain.total_flops_per_step


def test_selective_backprop_keeps_high_losses_more_often_at_the_expected_share():
    method = ActiveLearning(small_config(use_active_learning=True, active_learning_fraction=0.5))
    torch.manual_seed(0)
    kept, high, low = 0, 0, 0
    for step in range(200):
        losses = torch.rand(32)
        keep = method.keep_mask(losses, step)
        assert torch.equal(keep, method.keep_mask(losses, step))  # the same step draws the same
        kept += int(keep.sum())
        high += int(keep[losses > 0.75].sum()) / max(int((losses > 0.75).sum()), 1)
        low += int(keep[losses < 0.25].sum()) / max(int((losses < 0.25).sum()), 1)
    assert abs(kept / (200 * 32) - 0.5) < 0.05  # mean of k/32 over k = 1..32: 0.52
    assert high / 200 > 0.8 and low / 200 < 0.2  # ~0.875 and ~0.125 by the rule
    random = ActiveLearning(small_config(use_active_learning=True, active_learning_selection="random"))
    shares = [random.keep_mask(torch.arange(32.0), step).float() for step in range(200)]
    top, bottom = torch.stack(shares)[:, 24:].mean(), torch.stack(shares)[:, :8].mean()
    assert abs(top - 0.5) < 0.1 and abs(bottom - 0.5) < 0.1  # the control ignores the loss
    assert bool(method.keep_mask(torch.zeros(1)).all())  # at least one row


def test_the_verdict_reads_the_rows_backpropagated_and_the_perplexity():
    from resnetbk.methods.base import AblationRow

    figures = {"rows_scored": 100, "rows_kept": 50, "share_kept": 0.5, "selection": "loss", "mean_loss_kept": 6.0,
               "mean_loss_left_out": 5.0, "scoring_flops": 10.0}
    row = AblationRow(figures=figures, steps=10, flops_per_step=6.0, baseline_flops_per_step=10.0,
                      test_perplexity_change_percent=1.0)
    own, verdict = ActiveLearning.assess(row)
    assert verdict.startswith("held: less data (rows scored over rows backpropagated) 2.00x")
    assert "training compute 0.70x the baseline's" in own and "the same 10 steps" in own
    worse = ActiveLearning.assess(AblationRow(**{**row.__dict__, "test_perplexity_change_percent": 9.0}))[1]
    assert worse.startswith("not borne out: test perplexity +9.0%")


@pytest.mark.parametrize("field,value,message", [
    ("active_learning_fraction", 0.0, "active_learning_fraction: expected a number in \\(0.0, 1.0\\]"),
    ("active_learning_selection", "hardest", "active_learning_selection: expected one of"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        small_config(use_active_learning=True, **{field: value})
