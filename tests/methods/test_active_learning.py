"""Active learning: each epoch trains on the hardest windows by the current model's loss; the
scoring pass counts as training time and compute."""

import math

import pytest
import torch

from helpers_methods import run_training, small_config, synthetic_corpus
from resnetbk import data as wt2


def test_an_epoch_trains_on_the_hardest_fraction_and_the_schedule_follows(tmp_path):
    corpus = synthetic_corpus()
    config = small_config(use_active_learning=True, active_learning_fraction=0.5, epochs=2)
    result = run_training(config, corpus, tmp_path)
    windows = wt2.num_windows(wt2.streams(corpus.train, 4)[0], 16)
    assert result.steps == 2 * math.ceil(windows / 2)
    figures = result.methods["use_active_learning"]
    for epoch in figures["epochs"]:
        assert epoch["windows_scored"] == windows and epoch["windows_kept"] == math.ceil(windows / 2)
        assert epoch["mean_loss_kept"] >= epoch["mean_loss_dropped"]
        assert epoch["scoring_flops"] > 0
    # The scoring pass is training time: more than the steps' own time.
    assert result.training_time >= figures["scoring_seconds"]
    plain = run_training(small_config(epochs=2), corpus, tmp_path, name="plain")
    assert plain.steps == 2 * windows


def test_the_kept_windows_are_the_highest_loss_ones(monkeypatch):
    from types import SimpleNamespace

    from resnetbk.methods import active_learning

    losses = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 2.5])
    monkeypatch.setattr(active_learning, "window_losses", lambda state, tracer=None: losses)
    state = SimpleNamespace(window_order=torch.tensor([5, 4, 3, 2, 1, 0]), figures={})
    active_learning.ActiveLearning(small_config(use_active_learning=True, active_learning_fraction=0.5)).on_epoch_start(state)
    assert state.window_order.tolist() == [5, 3, 1]  # the three hardest, in the epoch's order


def test_fraction_is_checked():
    with pytest.raises(ValueError, match="active_learning_fraction: expected a number in \\(0.0, 1.0\\]"):
        small_config(use_active_learning=True, active_learning_fraction=0.0)
