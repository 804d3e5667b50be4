"""Spectral parameters (``use_spectral_z``): a learnable z = E + i*eta per BK-Core channel.

Held to the dense oracle for the gradients of E and eta (every fast backend, odd sizes, both
modes), bounded and accurate in float32 at small eta and N = 65,536, initialised as documented,
and shown to reach further back than the fixed z = i (a structural property, before training).
"""

import math

import pytest
import torch

from helpers import make_config
from resnetbk import bk_core, methods
from resnetbk.bench.config import model_options
from resnetbk.bench.recipe import make_model
from resnetbk.core.reference import dense_resolvent_diag
from resnetbk.measure.context_reach import context_reach
from resnetbk.methods.base import AblationRow
from resnetbk.methods.spectral_z import ETA_FLOOR, SpectralShift
from resnetbk.models import ModelOptions, build_model
from resnetbk.models.resnet_bk import BKMixer


def _spectral_leaves(channels: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    energy = (-4.0 * torch.rand(channels, generator=gen, dtype=torch.float64)).requires_grad_()  # inside H0's band
    log_eta = torch.linspace(math.log(1e-2), 0.0, channels, dtype=torch.float64).requires_grad_()
    return energy, log_eta


@pytest.mark.parametrize("backend", ("rust", "torch_sweep", "torch_scan"))
@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
@pytest.mark.parametrize("n", (1, 2, 7, 16))
def test_gradients_of_energy_and_eta_match_the_dense_oracle(backend, mode, n):
    batch, channels = 2, 3
    gen = torch.Generator().manual_seed(n)
    diag = -2.0 + torch.randn(batch, channels, n, generator=gen, dtype=torch.float64)
    upper = torch.ones(n - 1, dtype=torch.float64)
    weights = torch.randn(batch, channels, n, 2, generator=gen, dtype=torch.float64)

    def loss(g):
        return (weights[..., 0] * g.real + weights[..., 1] * g.imag).sum()

    grads = []
    for fast in (True, False):
        energy, log_eta = _spectral_leaves(channels, seed=1)
        z = torch.complex(energy, log_eta.exp())
        if fast:
            g = bk_core(diag, upper, None, z, mode=mode, backend=backend, grad="exact")
        else:
            g = dense_resolvent_diag(diag, upper.expand(batch, channels, n - 1), None, z.expand(batch, channels), mode)
        grads.append(torch.autograd.grad(loss(g), (energy, log_eta)))
    (fast_e, fast_eta), (dense_e, dense_eta) = grads
    torch.testing.assert_close(fast_e, dense_e, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(fast_eta, dense_eta, rtol=1e-9, atol=1e-10)
    assert dense_eta.abs().sum() > 0  # the comparison is not of zeros


@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
def test_small_eta_at_65536_positions_stays_bounded_and_accurate_in_float32(mode):
    n, channels = 65_536, 3
    gen = torch.Generator().manual_seed(0)
    # The model's potential: the Laplacian plus a bounded (tanh) random potential.
    diag64 = -2.0 + 3.0 * torch.tanh(torch.randn(1, channels, n, generator=gen, dtype=torch.float64))
    upper64 = torch.ones(n - 1, dtype=torch.float64)
    eta = torch.tensor([ETA_FLOOR, 1e-3, 1e-2], dtype=torch.float64)
    energy = torch.tensor([-2.0, -0.5, 0.0], dtype=torch.float64)
    weights = torch.randn(1, channels, n, generator=gen, dtype=torch.float64)
    results = {}
    for dtype in (torch.float32, torch.float64):
        diag = diag64.to(dtype).requires_grad_()
        e, log_eta = energy.to(dtype).requires_grad_(), eta.log().to(dtype).requires_grad_()
        z = torch.complex(e, log_eta.exp())
        g = bk_core(diag, upper64.to(dtype), None, z, mode=mode, backend="rust")
        (weights.to(dtype) * g.imag).sum().backward()
        results[dtype] = (g, diag.grad, e.grad, log_eta.grad)
    g32, g64 = results[torch.float32][0], results[torch.float64][0]
    assert torch.isfinite(torch.view_as_real(g32)).all()
    # Im(H - z) <= -eta on every pivot keeps |G| <= 1/eta per channel.
    assert (g32.abs().amax(dim=-1) <= (1 / eta) * (1 + 1e-4)).all()
    assert (g32.imag > 0).all()
    # float32's error grows as the conditioning, ~1/eta (measured: 4e-4 at eta = 1e-4, 2e-5 at 1e-3):
    # why eta is floored at 1e-4. Per channel: forward, diag's gradient, E's and eta's.
    bound = 1e-7 / eta
    rel = lambda a, b: ((a.to(b.dtype) - b).norm() / b.norm()).item()
    for c in range(channels):
        assert rel(g32[0, c], g64[0, c]) < bound[c], c
        assert rel(results[torch.float32][1][0, c], results[torch.float64][1][0, c]) < 3 * bound[c], c
        for k in (2, 3):  # scalars summed over 65,536 positions with cancellation: float32 summation
            assert rel(results[torch.float32][k][c], results[torch.float64][k][c]) < 1e-2, (c, k)


def test_parameters_start_as_documented_and_eta_is_floored():
    mixer = BKMixer(16, 5)
    assert mixer.spectral_z() == 1j  # no shift attached: the fixed z = i
    mixer.shift = SpectralShift(5, eta_min=1e-3, eta_max=1.0)
    z = mixer.spectral_z()
    assert z.shape == (5,) and torch.equal(z.real, torch.zeros(5))
    torch.testing.assert_close(z.imag.log(), torch.linspace(math.log(1e-3), 0.0, 5))
    with torch.no_grad():
        mixer.shift.log_eta.fill_(math.log(1e-9))
    assert torch.equal(mixer.spectral_z().imag, torch.full((5,), ETA_FLOOR))


def test_the_method_sets_channels_and_range_and_the_model_learns_z():
    config = make_config(d_model=16, n_layers=2, n_seq=12, use_spectral_z=True, spectral_channels=6,
                             eta_min=1e-2, eta_max=0.5)
    options = model_options(config, 50)
    assert options.bk_channels == 6
    assert model_options(config.with_methods(spectral_channels=0), 50).bk_channels == config.model.bk_channels
    torch.manual_seed(0)
    model = make_model(config, 50)
    for block in model.blocks:
        eta = block.bk.spectral_z().imag.detach()
        torch.testing.assert_close(eta.log(), torch.linspace(math.log(1e-2), math.log(0.5), 6))
    tokens = torch.randint(50, (3, 12))
    nll, _ = model(tokens, torch.randint(50, (3, 12)))
    nll.backward()
    for block in model.blocks:
        assert block.bk.shift.energy.grad.abs().sum() > 0 and block.bk.shift.log_eta.grad.abs().sum() > 0


@pytest.mark.parametrize("fields,message", [
    (dict(spectral_channels=-1), "spectral_channels: expected 0 \\(keep bk_channels\\) or a positive integer"),
    (dict(eta_min=0.0), "eta_min: expected a positive number, got 0.0"),
    (dict(eta_min=0.5, eta_max=0.1), "eta_max: expected a number >= 0.5, got 0.1"),
])
def test_bad_settings_are_named(fields, message):
    with pytest.raises(ValueError, match=message):
        make_config(use_spectral_z=True, **fields)


def test_not_part_of_the_original_twelve_nor_of_resnet_bk_full():
    assert "use_spectral_z" in methods.FLAGS and "use_spectral_z" not in methods.ORIGINAL_FLAGS


def test_small_eta_channels_reach_further_back_than_fixed_z_before_any_training():
    # Structural: with z = i the recursion forgets ~4x per position; a channel with eta = 1e-3
    # does not. Same seed, same weights elsewhere; the loss's sensitivity 16 positions back.
    n = 40
    stream = torch.randint(50, (4 * n + 1,), generator=torch.Generator().manual_seed(1))
    reach = {}
    for spectral in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelOptions("resnet_bk", 50, 16, 2, n, dropout=0.0, bk_channels=4))
        if spectral:
            for block in model.blocks:
                block.bk.shift = SpectralShift(4, eta_min=1e-3, eta_max=1.0)
        model = model.double()
        reach[spectral] = context_reach(model, stream, n, batch=4, sequences=4)["relative"]
    assert reach[True][16] > 100 * reach[False][16]
    assert reach[True][32] > 100 * reach[False][32]


@pytest.mark.parametrize("reach_ratio,change,verdict", [
    (1e5, -0.0004, "reach held, perplexity not"), (1e5, -3.0, "held"), (0.5, -3.0, "not borne out")])
def test_the_verdict_needs_both_a_longer_reach_and_a_real_perplexity_gain(reach_ratio, change, verdict):
    base = {"relative": [1.0] + [1e-6] * 40}
    reach = {"relative": [1.0] + [1e-6 * reach_ratio] * 40}
    row = AblationRow(context_reach=reach, baseline_context_reach=base, test_perplexity_change_percent=change)
    own, said = methods.BY_FLAG["use_spectral_z"].assess(row)
    assert said.startswith(verdict) and "reach at d = 8" in own


def test_a_learnt_z_is_refused_with_the_resolvent_below_the_spectrum():
    config = make_config(d_model=16, n_layers=1, n_seq=12, use_spectral_z=True, bk_coupling="selective_real",
                         bk_coupling_max=2.0)
    with pytest.raises(ValueError, match="use_spectral_z: the resolvent below the spectrum"):
        model_options(config, 50)
