"""Sparse BK-Core: gated-off positions get potential 0 and skip the projection and read-out."""

import torch

from helpers_methods import component_flops, tiny, tokens, traced_forward
from resnetbk.models.resnet_bk import LAPLACIAN_DIAG


def _set_gates(model, bias: float) -> None:
    with torch.no_grad():
        for block in model.blocks:
            block.bk.gate.score.weight.zero_()
            block.bk.gate.score.bias.fill_(bias)


def test_all_gated_off_means_no_projection_no_read_out_and_no_mixer_output():
    model = tiny(sparse_bk=True)
    _set_gates(model, -10.0)
    x = tokens()
    report = traced_forward(model, x)
    assert component_flops(report, "blocks.0.bk.v_proj") == 0 and component_flops(report, "blocks.0.bk.output_proj") == 0
    assert model.blocks[0].bk.gate.realised_sparsity == 1.0
    h = torch.randn(2, 20, 16)
    assert torch.equal(model.blocks[0].bk(h), torch.zeros_like(h))


def test_all_gated_on_equals_the_dense_mixer():
    sparse, dense = tiny(sparse_bk=True), tiny()
    _set_gates(sparse, 10.0)
    h = torch.randn(2, 20, 16)
    for a, b in zip(sparse.blocks, dense.blocks):
        a.bk.v_proj.load_state_dict(b.bk.v_proj.state_dict())
        a.bk.output_proj.load_state_dict(b.bk.output_proj.state_dict())
    torch.testing.assert_close(sparse.blocks[0].bk(h), dense.blocks[0].bk(h))


def test_gate_learns_through_the_straight_through_estimator_and_the_sparsity_loss():
    model = tiny(sparse_bk=True)
    traced_forward(model, tokens(), backward=True)
    assert "sparsity" in model.aux_losses()
    gate = model.blocks[0].bk.gate
    assert gate.score.weight.grad is not None and gate.score.weight.grad.abs().sum() > 0
    assert 0.0 < model.blocks[0].bk.gate.realised_sparsity < 1.0


def test_gated_off_positions_have_potential_zero_and_skip_the_projection(monkeypatch):
    import resnetbk.models.resnet_bk as resnet_bk

    model = tiny(sparse_bk=True)
    mixer = model.blocks[0].bk
    seen = {}
    real_bk_core, real_potential = resnet_bk.bk_core, mixer._potential
    monkeypatch.setattr(resnet_bk, "bk_core", lambda diag, *a, **kw: seen.update(diag=diag, mask=kw["mask"])
                        or real_bk_core(diag, *a, **kw))
    monkeypatch.setattr(mixer, "_potential", lambda h: seen.update(rows=h.shape[0]) or real_potential(h))
    mixer(torch.randn(2, 20, 16))
    off = ~seen["mask"]
    assert 0 < int(off[:, 0].sum()) < 40
    assert bool((seen["diag"][off] == LAPLACIAN_DIAG).all())  # potential exactly 0 where gated off
    assert not bool((seen["diag"][~off] == LAPLACIAN_DIAG).all())
    assert seen["rows"] == 40 - int(off[:, 0].sum())  # the projection ran on the kept rows only


def test_the_penalty_reads_the_hard_gate_and_training_realises_the_target_sparsity(tmp_path):
    from helpers_methods import run_training, small_config, synthetic_corpus

    model = tiny(sparse_bk=True)
    _set_gates(model, 10.0)  # every position kept: the hard fraction is 1, the sigmoid's mean ~1 too
    with torch.no_grad():
        model.blocks[0].bk.gate.score.bias.fill_(0.01)  # kept (sigmoid 0.5025 > 0.5), the sigmoid's mean ~0.5
    model(tokens())
    gate = model.blocks[0].bk.gate
    assert gate.aux_loss.item() == 0.25  # (1 - 0.5)^2 of the hard fraction, not ~0 of the mean sigmoid
    result = run_training(small_config(use_sparse_bk=True, epochs=3, lr=1e-2, sparse_bk_target=0.3),
                          synthetic_corpus(train_tokens=3000), tmp_path)
    realised = result.methods["use_sparse_bk"]["realised_sparsity_train"][-1]
    assert abs(realised - 0.3) <= 0.05, realised
