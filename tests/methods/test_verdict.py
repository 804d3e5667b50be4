"""The ablation's one verdict rule (``methods.verdict``): one tolerance, one perplexity margin,
the failing part named, nothing held that was not measured."""

import math

import pytest

from resnetbk.methods.verdict import Condition, Factor, judge, perplexity_margin


def test_held_needs_every_factor_at_ninety_percent_and_the_perplexity_within_the_margin():
    assert judge([Factor("speed", 1.8, 2)], 1.9).startswith("held: speed 1.80x (claimed 2x, needs 1.80x)")
    assert judge([Factor("speed", 1.79, 2)], 0.0) == "not borne out: speed 1.79x (claimed 2x, needs 1.80x)"
    # A size or speed claim cannot hold at a perplexity cost beyond the margin.
    assert judge([Factor("size", 8.0, 4)], 40.2) == ("not borne out: test perplexity +40.2% (more than the "
                                                     "allowed +2.0%)")
    both = judge([Factor("size", 1.0, 4)], 3.0)
    assert both.startswith("not borne out: size 1.00x") and both.endswith("test perplexity +3.0% (more than the allowed +2.0%)")


def test_the_verdict_says_whether_the_saving_was_delivered():
    assert judge([Factor("speed", 2.0, 2)], 0.5).held
    worse = judge([Factor("speed", 2.0, 2)], 5.0)
    assert not worse.held and worse.saving_delivered  # only the perplexity failed
    short = judge([Factor("speed", 1.0, 2)], 0.5)
    assert not short.held and not short.saving_delivered


def test_the_margin_is_two_seed_standard_deviations_or_two_percent():
    assert perplexity_margin(None) == 2.0 and perplexity_margin(0.4) == 2.0 and perplexity_margin(1.5) == 3.0
    assert judge([Factor("speed", 3.0, 2)], 2.9, noise_percent=1.5).startswith("held")
    assert judge([Factor("speed", 3.0, 2)], 3.1, noise_percent=1.5).startswith("not borne out: test perplexity")


def test_conditions_notes_and_missing_measurements():
    unmet = Condition("the depth does not vary between tokens", met=False)
    assert judge([Factor("fewer blocks", 2.0, 1.43)], 0.0, conditions=(unmet,)) == (
        "not borne out: the depth does not vary between tokens")
    never = Factor("fewer steps", 0.0, 10, note="never reached it")
    assert judge([never], 0.0) == "not borne out: fewer steps: never reached it (claimed 10x)"
    assert judge([Factor("speed", math.nan, 2)], 0.0) == "not measured: speed"
    assert judge([Factor("speed", None, 2)], 0.0) == "not measured: speed"
    assert judge([], 0.0).startswith("not measured")
    assert judge([Factor("speed", 2.0, 2)], math.nan) == "not measured: the test perplexity"


@pytest.mark.parametrize("flag", ["use_analytic_gradient", "use_quantization", "use_pruning", "use_sparse_bk",
                                  "use_mixed_precision", "use_multi_scale", "use_act"])
def test_every_claimed_figure_goes_through_the_one_rule(flag):
    """A method's verdict names its factor with the rule's "claimed ... needs ..." words."""
    import inspect

    from resnetbk import methods

    assert "judge(" in inspect.getsource(methods.BY_FLAG[flag].assess)
