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
    model = tiny(act=True)  # bias 1: p = 0.73, tokens halt after about two blocks
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
    model = tiny(act=True)
    state = SimpleNamespace(model=model, config=config, corpus=SimpleNamespace(valid=tokens(b=1, n=1000).flatten()),
                            evaluate=lambda t, **kw: evaluate(model, t, config, torch.device("cpu"), **kw))
    figures = record_evaluation(state, blocks=True, components=True)
    assert figures["tokens"] == 399 and figures["mean_blocks_per_token"] == pytest.approx(2.0)
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
