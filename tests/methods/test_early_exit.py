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
