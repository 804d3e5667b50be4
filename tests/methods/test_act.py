"""ACT: halted tokens skip the later blocks' work, carry their state, and pay a ponder cost."""

import pytest
import torch

from helpers import make_config
from helpers_methods import component_flops, tiny, tokens, traced_forward


def test_tokens_that_halt_after_the_first_block_skip_the_rest():
    model = tiny(act=True, act_bias_init=10.0).eval()  # p = sigmoid(10) > 0.99: halt after block 0
    x = tokens()
    report = traced_forward(model, x)
    assert bool((model.depth.blocks_per_token == 1).all())
    for i in (1, 2, 3):
        assert component_flops(report, f"blocks.{i}.moe") == 0, i  # no feed-forward work at all
        assert component_flops(report, f"blocks.{i}.bk.output_proj") == 0, i  # nor read-out
    assert component_flops(report, "blocks.0.moe") > 0
    # Halting with remainder 1 at the first block: the output is exactly the state after block 0.
    with torch.no_grad():
        h = model.dropout(model.token_embedding(x) + model.position_embedding(torch.arange(x.shape[1])))
        want = model.final_norm(model.blocks[0](h))
        torch.testing.assert_close(model.features(x), want)


def test_tokens_that_never_halt_run_every_block_and_match_a_weighted_mean():
    model = tiny(act=True, act_bias_init=-10.0).eval()  # p ~ 0: every token runs all blocks
    x = tokens()
    with torch.no_grad():
        model.features(x)
    assert bool((model.depth.blocks_per_token == 4).all())
    assert model.depth.ponder.item() == pytest.approx(4 + 1, abs=1e-3)  # N = 4 stages, remainder ~1


def test_ponder_cost_reaches_the_halting_units_and_fewer_blocks_cost_less_compute():
    model = tiny(act=True, act_bias_init=1.0)  # p = 0.73: tokens halt after about two blocks
    x = tokens()
    report = traced_forward(model, x, backward=True)
    assert "ponder" in model.aux_losses()
    # p_0 = 0.73 enters every token's weights and remainder (the later units only decide when to stop).
    assert model.depth.halting[0].weight.grad.abs().sum() > 0
    mean_blocks = model.depth.blocks_per_token.float().mean().item()
    assert 1 < mean_blocks < 4
    dense = traced_forward(tiny(), x, backward=True)
    assert report["by_phase"]["forward"] < dense["by_phase"]["forward"]


def test_a_methods_evaluation_names_components_and_separates_the_blocks_from_the_head():
    from types import SimpleNamespace

    from resnetbk.methods.evaluation import record_evaluation
    from resnetbk.train.evaluate import evaluate

    config = make_config(n_seq=20, eval_batch_size=4, method_eval_tokens=400, use_act=True)
    model = tiny(act=True, act_bias_init=1.0)
    state = SimpleNamespace(model=model, config=config, corpus=SimpleNamespace(valid=tokens(b=1, n=1000).flatten()),
                            evaluate=lambda t, **kw: evaluate(model, t, config, torch.device("cpu"), **kw))
    figures = record_evaluation(state, blocks=True, components=True)
    assert figures["tokens"] == 399 and figures["mean_blocks_per_token"] == pytest.approx(2.0)
    assert figures["depth_fractions"] == pytest.approx([0, 0, 1, 0, 0])  # every token ran 2 of 4 blocks
    assert 0 < figures["blocks_forward_flops_per_token"] < figures["forward_flops_per_token"]
    assert {"blocks.0.moe", "lm_head", "depth"} <= set(figures["forward_flops_per_token_by_component"])


def test_a_method_evaluation_that_asks_for_no_block_figure_has_none(tmp_path):
    """record_evaluation(blocks=False) must not report mean blocks per token (it once did, as 0.0)."""
    from helpers_methods import run_training, small_config, synthetic_corpus

    result = run_training(small_config(use_sparse_bk=True, epochs=1, max_steps=2), synthetic_corpus(), tmp_path)
    evaluation = result.methods["use_sparse_bk"]["evaluation"]
    assert "realised_sparsity" in evaluation and "blocks_forward_flops_per_token" in evaluation
    assert "mean_blocks_per_token" not in evaluation
    act = run_training(small_config(use_act=True, epochs=1, max_steps=2), synthetic_corpus(), tmp_path, name="act")
    assert 1 <= act.methods["use_act"]["evaluation"]["mean_blocks_per_token"] <= 3
    assert sum(act.methods["use_act"]["evaluation"]["depth_fractions"]) == pytest.approx(1.0)
    assert sum(act.methods["use_act"]["depth_fractions_train"][0]) == pytest.approx(1.0)


def test_by_default_every_token_starts_at_full_depth():
    model = tiny(act=True).eval()  # halting bias -2: p = 0.12 per block, never 0.99 in 3 units
    with torch.no_grad():
        model.features(tokens())
    assert bool((model.depth.blocks_per_token == 4).all())


def test_the_verdict_needs_the_depth_to_vary_between_tokens_and_the_perplexity_to_hold():
    from resnetbk.methods import ACT
    from resnetbk.methods.base import AblationRow

    def row(fractions, change=0.5):
        mean = sum(k * f for k, f in enumerate(fractions))
        figures = {"n_layers": 4, "fraction_of_layers_used": mean / 4,
                   "evaluation": {"mean_blocks_per_token": mean, "depth_fractions": fractions}}
        return AblationRow(figures=figures, test_perplexity_change_percent=change, forward_flops_ratio=0.9,
                           flops_per_step=9.0, baseline_flops_per_step=10.0)

    own, verdict = ACT.assess(row([0, 0, 1.0, 0, 0]))  # every token at 2 blocks: the old default's result
    assert verdict.startswith("not borne out") and "does not vary" in verdict
    assert "whole training step's FLOPs 0.90x" in own
    own, verdict = ACT.assess(row([0, 0.3, 0.4, 0.2, 0.1]))  # 2.1 blocks on average, four depths used
    assert verdict.startswith("held") and "4 depths" in verdict
    assert ACT.assess(row([0, 0.3, 0.4, 0.2, 0.1], change=5.0))[1].startswith("not borne out: test perplexity +5.0%")
    assert ACT.assess(row([0, 0, 0, 0.5, 0.5]))[1].startswith("not borne out: fewer blocks per token")


def test_after_a_short_training_run_the_depth_varies_between_tokens(tmp_path):
    """From full depth, the ponder cost teaches some tokens to stop early and not others."""
    from helpers_methods import run_training, small_config, synthetic_corpus

    config = small_config(use_act=True, epochs=1, ponder_weight=0.1, lr=1e-2, n_layers=4)
    figures = run_training(config, synthetic_corpus(train_tokens=3000), tmp_path).methods["use_act"]
    depths = figures["depth_fractions_train"][0]
    assert sum(share >= 0.01 for share in depths) >= 2, depths
    assert figures["mean_blocks_per_token_train"][0] < 4  # some tokens learned to halt
