"""Active learning: each epoch trains on the hardest windows by the current model's loss; the
scoring pass counts as training time and compute."""

import contextlib
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
    monkeypatch.setattr(active_learning, "window_losses", lambda state: (losses, 0))
    state = SimpleNamespace(window_order=torch.tensor([5, 4, 3, 2, 1, 0]), figures={})
    active_learning.ActiveLearning(small_config(use_active_learning=True, active_learning_fraction=0.5)).on_epoch_start(state)
    assert state.window_order.tolist() == [5, 3, 1]  # the three hardest, in the epoch's order


def test_fraction_is_checked():
    with pytest.raises(ValueError, match="active_learning_fraction: expected a number in \\(0.0, 1.0\\]"):
        small_config(use_active_learning=True, active_learning_fraction=0.0)


def test_the_scoring_pass_is_priced_from_one_traced_window_per_shape(monkeypatch):
    """The tracer sees one window of each shape, and the price equals tracing every window."""
    from types import SimpleNamespace

    from resnetbk.bench.recipe import make_model
    from resnetbk.flops import FlopsTracer
    from resnetbk.methods import active_learning

    config = small_config(use_active_learning=True)
    corpus = synthetic_corpus(train_tokens=1000)
    torch.manual_seed(0)
    model = make_model(config, corpus.vocab_size)
    inputs, targets = wt2.streams(corpus.train, config.batch_size)
    state = SimpleNamespace(model=model, config=config, device=torch.device("cpu"), train_inputs=inputs,
                            train_targets=targets, forward_context=lambda: contextlib.nullcontext())
    windows = list(wt2.windows(inputs, targets, config.model.n_seq))
    shapes = {tuple(x.shape) for x, _ in windows}
    assert len(windows) > len(shapes) == 2  # full windows and a shorter last one

    entered = []

    class CountingTracer(FlopsTracer):
        def __enter__(self):
            entered.append(self)
            return super().__enter__()

    monkeypatch.setattr(active_learning, "FlopsTracer", CountingTracer)
    losses, flops = active_learning.window_losses(state)
    assert losses.shape == (len(windows),) and len(entered) == len(shapes)
    lm_heads = sum(count for key, count in entered[0].records.items() if key[-1] == "lm_head")
    assert lm_heads >= 1 and all(key[-2] == "forward" for key in entered[0].records)

    everything = FlopsTracer()  # the old way: every window traced
    model.eval()
    with torch.no_grad(), everything:
        for x, y in windows:
            model(x, y)
    assert flops == everything.report()["total"]
