"""The two language models: shapes, parameter counts, the router's gradient, and causality."""

import pytest
import torch

from helpers import make_config
from resnetbk.measure.causality import probe_causality
from resnetbk.models import ModelOptions, build_model


@pytest.mark.parametrize("arch", ("transformer", "resnet_bk", "lstm", "mamba"))
def test_any_length_up_to_n_seq(arch):
    model = build_model(ModelOptions(arch, 100, 16, 2, 12))
    for n in (1, 5, 12):
        assert model(torch.randint(100, (3, n))).shape == (3, n, 100)
    with pytest.raises(ValueError, match="tokens: length 13 is outside 1..n_seq = 12"):
        model(torch.randint(100, (3, 13)))


def test_parameter_counts_by_hand():
    v, d, n_seq, layers = 100, 16, 12, 2
    t = build_model(ModelOptions("transformer", v, d, layers, n_seq, tie_embeddings=True))
    per_block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    non_embedding = layers * per_block + 2 * d  # + final LayerNorm
    assert t.parameter_counts() == {"non_embedding": non_embedding, "total": non_embedding + v * d + n_seq * d}
    untied = build_model(ModelOptions("transformer", v, d, layers, n_seq, tie_embeddings=False))
    assert untied.parameter_counts()["total"] == non_embedding + 2 * v * d + n_seq * d
    assert untied.size_mb() == pytest.approx(untied.parameter_counts()["total"] * 4 / 2**20)


def test_router_gets_a_gradient():
    model = build_model(ModelOptions("resnet_bk", 50, 16, 1, 8))
    logits = model(torch.randint(50, (4, 8)))
    (logits.logsumexp(-1).mean() + model.aux_losses()["load_balance"]).backward()
    router = model.blocks[0].moe.router
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    assert model.blocks[0].bk.bk_scale.grad is not None


@pytest.mark.parametrize("arch", ("transformer", "resnet_bk", "lstm", "mamba"))
def test_causal_models_pass_the_probe(arch):
    torch.manual_seed(0)
    model = build_model(ModelOptions(arch, 200, 32, 2, 24))
    result = probe_causality(model, 200, 24)
    assert result.causal, result.summary()


def test_bidirectional_resnet_bk_fails_the_probe():
    torch.manual_seed(0)
    model = build_model(ModelOptions("resnet_bk", 200, 32, 2, 24, bk_mode="bidirectional"))
    result = probe_causality(model, 200, 24)
    assert not result.causal and "NOT causal" in result.summary()


def test_bk_gradient_paths_agree():
    """The exact BK backward and autograd through the torch implementation give the same model gradient."""
    grads = {}
    for exact in (True, False):
        torch.manual_seed(1)
        options = ModelOptions("resnet_bk", 40, 16, 1, 10, dropout=0.0, bk_grad="exact" if exact else "autograd")
        model = build_model(options).double()
        tokens = torch.randint(40, (2, 10), generator=torch.Generator().manual_seed(2))
        model(tokens).logsumexp(-1).sum().backward()
        grads[exact] = model.blocks[0].bk.v_proj.weight.grad
    assert grads[True].abs().sum() > 0
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-10, atol=1e-12)


def test_an_unknown_architecture_is_a_value_error_everywhere():
    from resnetbk.flops.estimate import StepShape

    with pytest.raises(ValueError, match="architecture: expected one of"):
        ModelOptions("rnn", 10)
    with pytest.raises(ValueError, match="architecture: expected one of"):
        make_config(architecture="rnn")
    with pytest.raises(TypeError, match="options: expected a ModelOptions"):
        StepShape("rnn", batch=2)
    with pytest.raises(TypeError, match="options: expected a ModelOptions"):
        build_model("resnet_bk")


def test_the_estimate_refuses_data_dependent_methods_instead_of_pricing_them_as_the_baseline():
    from resnetbk.bench.config import step_shape

    with pytest.raises(NotImplementedError, match="use_act: the closed-form estimate covers"):
        step_shape(make_config(use_act=True), 10)
    assert step_shape(make_config(use_analytic_gradient=True), 10).options.bk_grad == "exact"


def moe_by_definition(moe, flat):
    """Every expert on every row, each row keeping its chosen expert's output times its probability."""
    probs = torch.softmax(moe.router(flat), dim=-1)
    chosen_prob, chosen = probs.max(dim=-1)
    every = torch.stack([expert(flat) for expert in moe.experts])  # (E, T, d)
    return every[chosen, torch.arange(flat.shape[0])] * chosen_prob[:, None]


@pytest.mark.parametrize("rows", [1, 37, 300])
def test_moe_rows_grouped_by_expert_equal_the_definition_forward_and_gradients(rows):
    from resnetbk.models.resnet_bk import MoEFeedForward

    torch.manual_seed(rows)
    moe = MoEFeedForward(12, 5)
    with torch.no_grad():
        moe.router.bias[3] = -50.0  # expert 3 gets no rows
    flat = torch.randn(rows, 12, requires_grad=True)
    upstream = torch.randn(rows, 12)
    results = []
    for run in (moe, lambda x: moe_by_definition(moe, x)):
        out = run(flat)
        results.append((out, *torch.autograd.grad(out, [flat, *moe.parameters()], upstream, allow_unused=True)))
    for ours, theirs in zip(*results):
        if ours is None:  # expert 3's weights: no gradient, and a zero one by the definition
            assert theirs is None or not theirs.abs().any()
            continue
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    moe(flat)
    probs = torch.softmax(moe.router(flat), dim=-1)
    fraction = torch.bincount(probs.argmax(-1), minlength=5).float() / rows
    torch.testing.assert_close(moe.aux_loss, 5 * (fraction * probs.mean(0)).sum())
    assert moe(flat[:0]).shape == (0, 12) and moe.aux_loss.item() == 0.0


def test_the_no_mixer_control_is_position_wise_causal_and_has_no_mixer():
    torch.manual_seed(0)
    model = build_model(ModelOptions("resnet_bk", 200, 32, 2, 24, no_mixer=True))
    assert all(block.bk is None for block in model.blocks)
    assert probe_causality(model, 200, 24).causal
    # Position-wise: a token's logits do not depend on any other position.
    model.eval()
    x = torch.randint(200, (1, 24))
    y = x.clone()
    y[0, :10] = (y[0, :10] + 1) % 200
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0, 10:], model(y)[0, 10:])
    with pytest.raises(ValueError, match="no_mixer: only ResNet-BK"):
        ModelOptions("transformer", 200, 32, 2, 24, no_mixer=True)


@pytest.mark.parametrize("flag", ["use_sparse_bk", "use_spectral_z", "use_analytic_gradient"])
def test_a_method_on_the_mixer_with_the_no_mixer_control_is_an_error(flag):
    with pytest.raises(ValueError, match=f"{flag}: acts on the BK-Core mixer, which model.no_mixer leaves out"):
        make_config(no_mixer=True, **{"use_analytic_gradient": False, flag: True})
