"""Early exit: exits in training, confident exits at evaluation that skip the later blocks."""

import torch

from helpers import make_config
from helpers_methods import component_flops, tiny, tokens, traced_forward


def test_training_records_an_exit_after_every_block_but_the_last():
    model = tiny(early_exit=True)
    model(tokens())
    assert len(model.depth.exit_states) == 3
    assert bool((model.depth.blocks_per_token == 4).all())  # training runs every block


def test_a_confident_token_exits_and_its_state_is_its_output():
    model = tiny(early_exit=True).eval()
    with torch.no_grad():
        for head in model.depth.confidence:
            head.weight.zero_()
            head.bias.fill_(10.0)  # confidence sigmoid(10) > 0.9
    model.depth.exit_threshold = 0.9
    x = tokens()
    report = traced_forward(model, x)
    assert bool((model.depth.blocks_per_token == 1).all())
    for i in (1, 2, 3):
        assert component_flops(report, f"blocks.{i}.moe") == 0
    with torch.no_grad():
        h = model.token_embedding(x) + model.position_embedding(torch.arange(x.shape[1]))
        torch.testing.assert_close(model(x), model.lm_head(model.final_norm(model.blocks[0](h))))


def test_without_a_threshold_every_token_runs_every_block():
    model = tiny(early_exit=True).eval()
    with torch.no_grad():
        model(tokens())
    assert bool((model.depth.blocks_per_token == 4).all())


def test_exit_losses_train_the_exits_and_the_confidence_heads():
    from types import SimpleNamespace

    from resnetbk.methods.early_exit import EarlyExit

    model = tiny(early_exit=True)
    x = tokens()
    state = SimpleNamespace(model=model, targets=x.roll(-1, 1), hidden=model(x, features_only=True), loss_terms={})
    EarlyExit(make_config(use_early_exit=True, exit_loss_fraction=1.0)).on_loss(state)
    assert set(state.loss_terms) == {"exit", "exit_confidence"}
    (state.loss_terms["exit"] + state.loss_terms["exit_confidence"]).backward()
    assert model.blocks[0].moe.router.weight.grad.abs().sum() > 0  # exit 0's loss reaches block 0
    assert model.depth.confidence[0].weight.grad.abs().sum() > 0


def test_the_calibrated_threshold_is_the_lowest_within_tolerance():
    from resnetbk.methods.early_exit import calibrated_threshold

    calibration = {"0.5": {"perplexity": 110.0}, "0.7": {"perplexity": 101.5}, "0.9": {"perplexity": 100.2}}
    assert calibrated_threshold(calibration, 100.0, 2.0) == "0.7"
    assert calibrated_threshold(calibration, 100.0, 0.1) is None


def test_a_run_calibrates_its_threshold_on_held_out_validation_tokens(tmp_path):
    from helpers_methods import run_training, small_config, synthetic_corpus

    result = run_training(small_config(use_early_exit=True, epochs=1), synthetic_corpus(eval_tokens=600), tmp_path)
    figures = result.methods["use_early_exit"]
    assert figures["calibration_held_out"] and set(figures["calibration"]) == set(figures["thresholds"])
    chosen = figures["calibrated_threshold"]
    full = figures["calibration_all_blocks_perplexity"]
    within = [t for t, f in figures["calibration"].items() if f["perplexity"] <= full * 1.02]
    assert chosen == (min(within, key=float) if within else None)
