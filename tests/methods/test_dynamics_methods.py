"""Koopman and physics-informed: the block states they read, the least-squares fit, the Koopman
evaluation mode, the energy-conservation term (normalised, at a fixed weight)."""

import pytest
import torch

from helpers_methods import VOCAB, run_training, small_config, synthetic_corpus, tokens
from resnetbk.bench.recipe import make_model
from resnetbk.flops import FlopsTracer
from resnetbk.measure.causality import probe_causality
from resnetbk.methods.koopman import KoopmanModels, koopman_mode
from resnetbk.methods.physics_informed import Energies


def test_the_streaming_least_squares_fit_recovers_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 4, generator=gen) / 2
    models = KoopmanModels(1, 8, 4)
    for _ in range(5):
        z = torch.randn(300, 4, generator=gen)
        models.refit([(z, z @ truth.t())], decay=0.9, rows=10_000, eps=1e-8)
    torch.testing.assert_close(models.operator[0], truth, rtol=1e-4, atol=1e-4)
    assert models.residuals([(z, z @ truth.t())])[0] < 1e-4


def test_koopman_mode_replaces_the_later_blocks_and_stays_causal():
    config = small_config(use_koopman=True, koopman_start_block=1)
    model = make_model(config, VOCAB).eval()
    x = tokens(b=2, n=16)
    with torch.no_grad():
        normal = model(x)
        tracer = FlopsTracer()
        with koopman_mode(model, 1), tracer:
            replaced = model(x)
    assert not torch.allclose(normal, replaced)
    by_component = tracer.report()["by_component"]
    assert not any(c.startswith(("blocks.1.", "blocks.2.")) for c in by_component)
    assert any(c.startswith("koopman.lift.1") for c in by_component)
    with koopman_mode(model, 1):
        assert probe_causality(model, VOCAB, 16).causal
    with torch.no_grad():
        torch.testing.assert_close(model(x), normal)  # restored afterwards


@pytest.mark.parametrize("start", (1, 2))
def test_koopman_mode_with_multi_scale_replaces_exactly_the_blocks_it_names(start):
    """With the middle blocks shortened (stages (0) (1, 2 shortened) (3) at 4 layers), every block
    from ``start`` on runs as its Koopman model, the shortened group's own too, and no other."""
    config = small_config(use_koopman=True, use_multi_scale=True, koopman_start_block=start, n_layers=4)
    model = make_model(config, VOCAB).eval()
    x = tokens(b=2, n=16)
    tracer = FlopsTracer()
    with torch.no_grad(), koopman_mode(model, start), tracer:
        model(x)
    by_component = tracer.report()["by_component"]
    ran = {i for i in range(4) if any(c.startswith(f"blocks.{i}.") for c in by_component)}
    lifted = {i for i in range(4) if any(c.startswith(f"koopman.lift.{i}") for c in by_component)}
    assert ran == set(range(start)) and lifted == set(range(start, 4))
    assert any(c.startswith("shortened.") for c in by_component)  # the group's shortening still runs


def test_a_koopman_run_trains_the_lifts_fits_k_and_reports_both_modes(tmp_path):
    result = run_training(small_config(use_koopman=True, epochs=1), synthetic_corpus(), tmp_path)
    figures = result.methods["use_koopman"]
    assert figures["koopman_mode"]["perplexity"] > 0 and figures["normal"]["perplexity"] > 0
    assert figures["koopman_mode"]["forward_flops_per_token"] < figures["normal"]["forward_flops_per_token"]
    assert "koopman" in result.epoch_aux_losses
    assert len(figures["fit_relative_residual_last_step"]) == 3


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
    ("koopman_dim", 0, "use_koopman"), ("koopman_decay", 0.0, "use_koopman"), ("koopman_start_block", 3, "use_koopman"),
    ("physics_hidden", 0, "use_physics_informed"), ("physics_weight", 0.0, "use_physics_informed"),
])
def test_bad_hyperparameters_are_named(field, value, flag):
    with pytest.raises(ValueError, match=field):
        small_config(**{flag: True, field: value})
