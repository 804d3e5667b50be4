"""Koopman and physics-informed: the weights' DMD prediction and its jumps (and a refused one),
the energy-conservation term (normalised, at a fixed weight)."""

import pytest
import torch

from helpers_methods import run_training, small_config, synthetic_corpus
from resnetbk.methods.physics_informed import Energies


def test_dmd_of_the_updates_predicts_gradient_descent_on_a_quadratic():
    from resnetbk.methods.koopman import dmd_prediction

    torch.manual_seed(0)
    hessian = torch.diag(torch.linspace(0.1, 1.0, 50))
    w = torch.randn(50)
    snapshots = [w.clone()]
    for _ in range(9):
        w = w - 0.5 * hessian @ w
        snapshots.append(w.clone())
    predicted, fit_error = dmd_prediction(snapshots, 10)
    for _ in range(10):
        w = w - 0.5 * hessian @ w
    assert fit_error < 1e-4
    assert float((predicted - w).norm() / (w - snapshots[-1]).norm()) < 0.02  # 10 steps ahead, no gradient


def test_a_koopman_run_jumps_without_gradients_and_keeps_the_steps(tmp_path):
    config = small_config(use_koopman=True, epochs=2, koopman_snapshots=4, koopman_interval=8, koopman_horizon=5,
                          lr=3e-3)
    corpus = synthetic_corpus(train_tokens=2400)
    result = run_training(config, corpus, tmp_path)
    plain = run_training(small_config(epochs=2, lr=3e-3), corpus, tmp_path, name="plain")
    figures = result.methods["use_koopman"]
    assert result.steps == plain.steps  # the jumps are extra: every step is still one backward pass
    assert figures["jumps_taken"] + figures["jumps_refused"] >= 2
    assert figures["steps_advanced_without_gradients"] == 5 * figures["jumps_taken"]
    assert result.epoch_losses != plain.epoch_losses  # the jumps moved the weights


def test_an_unstable_prediction_is_refused(tmp_path, monkeypatch):
    from resnetbk.methods import koopman

    monkeypatch.setattr(koopman, "dmd_prediction", lambda snapshots, horizon, rank: (snapshots[-1] * 1e6, 0.0))
    config = small_config(use_koopman=True, epochs=1, koopman_snapshots=3, koopman_interval=4)
    figures = run_training(config, synthetic_corpus(), tmp_path).methods["use_koopman"]
    assert figures["jumps_taken"] == 0 and figures["jumps_refused"] >= 1


def test_the_energy_term_is_zero_only_for_a_conserved_energy_that_varies_and_a_constant_one_cannot_game_it():
    from resnetbk.methods.physics_informed import correlation

    torch.manual_seed(0)
    energies = Energies(8, 16)
    h = torch.randn(2, 5, 8)
    assert energies.conservation_loss([(h, h), (h, h)]).item() == pytest.approx(0.0, abs=1e-4)  # conserved
    loss = energies.conservation_loss([(h, h + 1), (h + 1, 3 * h)])
    assert 0 < loss.item() <= 2
    loss.backward()
    assert energies.kinetic[0].weight.grad.abs().sum() > 0
    # An energy that does not vary between positions conserves trivially; its term is the worst but one.
    with torch.no_grad():
        for mlp in (energies.kinetic, energies.potential):
            mlp[2].weight.zero_()
    constant = energies.conservation_loss([(h, h + 1), (h + 1, 3 * h)])
    assert constant.item() == pytest.approx(1.0)
    constant.backward()
    assert all(torch.isfinite(p.grad).all() for p in energies.parameters() if p.grad is not None)
    assert correlation(torch.ones(7), torch.arange(7.0)).item() == 0.0
    assert correlation(torch.arange(7.0), -torch.arange(7.0)).item() == pytest.approx(-1.0, abs=1e-5)


def test_a_physics_informed_run_adds_the_energy_term_at_its_fixed_weight(tmp_path):
    result = run_training(small_config(use_physics_informed=True, epochs=2, physics_weight=0.3), synthetic_corpus(),
                          tmp_path)
    assert "energy" in result.epoch_aux_losses and len(result.epoch_aux_losses["energy"]) == 2
    assert all(0 <= term <= 0.6 for term in result.epoch_aux_losses["energy"])  # weight 0.3 times a term in [0, 2]
    figures = result.methods["use_physics_informed"]
    assert figures["physics_weight"] == 0.3 and len(figures["conservation_term"]) == 2
    assert figures["conservation_term"][0] == pytest.approx(result.epoch_aux_losses["energy"][0] / 0.3, rel=1e-4)


@pytest.mark.parametrize("field,value,flag", [
    ("koopman_snapshots", 2, "use_koopman"), ("koopman_horizon", 0, "use_koopman"), ("koopman_max_move", 0.0, "use_koopman"),
    ("physics_hidden", 0, "use_physics_informed"), ("physics_weight", 0.0, "use_physics_informed"),
])
def test_bad_hyperparameters_are_named(field, value, flag):
    with pytest.raises(ValueError, match=field):
        small_config(**{flag: True, field: value})


def test_a_koopman_run_too_short_for_a_window_says_so_in_its_verdict():
    """Figures hold only the method's version when no window ever filled (one short epoch): the
    ablation's verdict says no jump was attempted instead of failing on the missing counts."""
    from resnetbk.methods.base import AblationRow
    from resnetbk.methods.koopman import Koopman

    own, verdict = Koopman.assess(AblationRow(figures={"version": 2}, test_perplexity_change_percent=1.0))
    assert "no jump attempted" in own and verdict
