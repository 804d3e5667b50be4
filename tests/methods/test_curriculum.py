"""Curriculum: sequence-length warm-up (same tokens, shorter sequences) and easy windows first."""

import pytest
import torch

from helpers_methods import VOCAB, run_training, small_config, synthetic_corpus
from resnetbk.methods.curriculum import cut_into_sequences, unigram_difficulty, warmup_length


def test_the_length_grows_linearly_in_multiples_of_8_then_stays_full():
    lengths = [warmup_length(s, 100, 16, 128, 0.3) for s in range(100)]
    assert lengths[0] == 16 and lengths[29] < 128 and lengths[30:] == [128] * 70
    assert lengths == sorted(lengths) and all(length % 8 == 0 for length in lengths)
    assert warmup_length(0, 100, 16, 128, 0.0) == 128  # no warm-up
    assert warmup_length(5, 100, 128, 128, 0.5) == 128


def test_cutting_keeps_each_rows_tokens_in_order():
    x = torch.arange(2 * 20).view(2, 20)
    cut = cut_into_sequences(x, 8)
    assert cut.shape == (4, 8)
    assert cut[1].tolist() == list(range(8, 16)) and cut[2].tolist() == list(range(20, 28))


def test_unigram_difficulty_ranks_rare_words_as_harder():
    targets = torch.tensor([[0, 0, 0, 0, 5, 6, 7, 8]])  # word 0 frequent; 5..8 once each
    scores = unigram_difficulty(targets, 4, 10)
    assert scores[0] < scores[1]


@pytest.mark.parametrize("architecture", ["resnet_bk", "transformer"])
def test_a_run_with_the_warm_up_trains_on_shorter_sequences_first(tmp_path, architecture):
    corpus = synthetic_corpus()
    config = small_config(architecture=architecture, use_curriculum=True, curriculum_start_length=4,
                          curriculum_fraction=0.5, epochs=2)
    result = run_training(config, corpus, tmp_path)
    counts = result.methods["use_curriculum"]["steps_at_length"]
    assert int(min(counts, key=int)) == 4 and "16" in counts  # short first, full length later
    plain = run_training(small_config(architecture=architecture), corpus, tmp_path, name="plain")
    assert result.epoch_losses != plain.epoch_losses  # the flag changed the training
    # The forward of a short-sequence step is cheaper (attention, position embeddings).
    assert result.steps == plain.steps


def test_unigram_order_puts_the_first_epochs_easy_windows_first_and_later_epochs_are_shuffled():
    from types import SimpleNamespace

    from resnetbk import data as wt2
    from resnetbk.methods.curriculum import Curriculum

    corpus = synthetic_corpus()
    config = small_config(use_curriculum=True, curriculum_order="unigram")
    inputs, targets = wt2.streams(corpus.train, 4)
    n_windows = wt2.num_windows(inputs, 16)
    shuffled = torch.randperm(n_windows, generator=torch.Generator().manual_seed(0))
    state = SimpleNamespace(train_targets=targets, corpus=corpus, window_order=shuffled.clone(),
                            progress=SimpleNamespace(epoch=0))
    method = Curriculum(config)
    method.on_epoch_start(state)
    scores = unigram_difficulty(targets, 16, VOCAB)[state.window_order]
    assert sorted(state.window_order.tolist()) == list(range(n_windows))
    assert scores.tolist() == sorted(scores.tolist())
    state.window_order, state.progress.epoch = shuffled.clone(), 1
    method.on_epoch_start(state)
    assert torch.equal(state.window_order, shuffled)


@pytest.mark.parametrize("field,value,message", [
    ("curriculum_start_length", 0, "curriculum_start_length: expected an integer in \\[1, n_seq"),
    ("curriculum_start_length", 999, "curriculum_start_length"),
    ("curriculum_fraction", 1.5, "curriculum_fraction"),
    ("curriculum_order", "random", "curriculum_order: expected one of"),
])
def test_bad_hyperparameters_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        small_config(use_curriculum=True, **{field: value})


def test_the_steps_verdict_reads_both_validation_curves():
    from resnetbk.methods.base import AblationRow
    from resnetbk.methods.curves import assess_steps

    base = [{"step": s, "tokens": 10 * s, "train_time": float(s), "perplexity": 100.0 / s} for s in (10, 20, 30)]

    def verdict(curve, change=0.0):
        row = AblationRow(valid_curve=curve, baseline_valid_curve=base, test_perplexity_change_percent=change)
        return assess_steps(row, claimed=1 / 0.7)[1]

    fast = [{**p, "perplexity": p["perplexity"] / 3} for p in base]  # reaches 3.33 at step 10: 3x fewer
    assert verdict(fast).startswith("held: fewer steps to the baseline's best validation perplexity 3.00x")
    assert verdict(fast, change=2.5).startswith("not borne out: test perplexity +2.5% (more than the allowed +2.0%)")
    slow = [{**p, "perplexity": p["perplexity"] * 2} for p in base]
    assert "never reached it" in verdict(slow) and verdict(slow).startswith("not borne out")
    assert verdict(base).startswith("not borne out: fewer steps to the baseline's best validation perplexity 1.00x "
                                    "(claimed 1.43x, needs 1.29x)")
    assert assess_steps(AblationRow(valid_curve=[], baseline_valid_curve=base), claimed=2)[1].startswith("not measured")
