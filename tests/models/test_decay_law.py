"""The decay law: the recursion equals the BK-Core's causal output, z = i at zero potential
decays 4.33x per position, the prediction follows the contraction, and a trained-or-not
ResNet-BK gets a law per block and channel (none for a model without a mixer)."""

import math

import torch

from resnetbk import bk_core
from resnetbk.measure.decay_law import _channel_law, causal_resolvent_diagonal, decay_law
from resnetbk.models import ModelOptions, build_model
from resnetbk.models.resnet_bk import BKMixer


def test_the_recursion_is_the_bk_cores_causal_diagonal():
    torch.manual_seed(0)
    diag = -2.0 + torch.randn(3, 2, 41, dtype=torch.float64)
    z = torch.tensor([0.3 + 1.0j, -0.2 + 0.05j], dtype=torch.complex128)
    ours = causal_resolvent_diagonal(diag, z)
    theirs = bk_core(diag, torch.ones(40, dtype=torch.float64), None, z, mode="causal", backend="torch")
    torch.testing.assert_close(ours, theirs.to(torch.complex128))


def test_z_i_at_zero_potential_keeps_a_quarter_of_the_past_per_position():
    g = causal_resolvent_diagonal(torch.full((200,), -2.0, dtype=torch.float64), 1j)
    assert abs(1 / g[-1].abs().item() ** 2 - 4.33) < 0.01
    near = causal_resolvent_diagonal(torch.full((200,), -2.0, dtype=torch.float64), 0.1j)
    assert 1 / near[-1].abs().item() ** 2 < 1.6  # closer to the spectrum: slower decay (1.57x)


class ZeroPotential(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(*x.shape[:-1], 1)


def test_the_law_of_a_model_predicts_a_product_of_contractions():
    torch.manual_seed(0)
    model = build_model(ModelOptions(vocab_size=40, d_model=16, n_layers=2, n_seq=32, dropout=0.0))
    tokens = torch.randint(0, 40, (1000,))
    law = decay_law(model, tokens, 32, sequences=4, batch=2)
    assert law["sequences"] == 4 and len(law["blocks"]) == 2
    for block in law["blocks"]:
        assert block["z"] == [[0.0, 1.0]]
        (predicted,) = block["predicted_relative"]
        assert predicted[0] == 1.0 and all(b <= a for a, b in zip(predicted, predicted[1:]))
        (decay,) = block["decay_per_position"]
        assert 1.5 < decay < 10  # near the 4.33x of zero potential for an untrained model
        assert math.isclose(predicted[8] ** (1 / 8), 1 / decay, rel_tol=0.3)
    channels = build_model(ModelOptions(vocab_size=40, d_model=16, n_layers=1, n_seq=32, bk_channels=3))
    assert len(decay_law(channels, tokens, 32, sequences=2)["blocks"][0]["decay_per_position"]) == 3


def test_no_law_without_a_mixer_or_a_window():
    tokens = torch.randint(0, 40, (1000,))
    assert decay_law(build_model(ModelOptions(vocab_size=40, d_model=16, n_layers=1, n_seq=32, no_mixer=True)),
                     tokens, 32) is None
    assert decay_law(build_model(ModelOptions(vocab_size=40, d_model=16, n_layers=1, n_seq=32)), tokens[:20], 32) is None


def test_the_prediction_is_the_product_of_the_contractions_before_the_last_position():
    """d/da_{t-d} of g_t is -prod_{j=t-d..t} g_j^2; relative to d = 0, prod_{j=t-d..t-1} |g_j|^2."""
    mixer = BKMixer(8, 1)
    torch.nn.init.zeros_(mixer.v_proj.weight)
    torch.nn.init.zeros_(mixer.v_proj.bias)  # potential 0 everywhere: a_k = -2
    law = _channel_law(mixer, torch.randn(3, 12, 8))
    c = causal_resolvent_diagonal(torch.full((12,), -2.0, dtype=torch.float64), 1j).abs().square()
    for d in (1, 2, 5, 11):
        assert math.isclose(law["predicted_relative"][0][d], float(c[11 - d:11].prod()), rel_tol=1e-9)
    # And the measured gradient of the BK-Core's output agrees.
    a = torch.full((12,), -2.0, dtype=torch.float64, requires_grad=True)
    g = bk_core(a, torch.ones(11, dtype=torch.float64), None, 1j, mode="causal", backend="torch")[-1]
    d_real, = torch.autograd.grad(g.real, a, retain_graph=True)
    d_imag, = torch.autograd.grad(g.imag, a)
    magnitude = torch.sqrt(d_real**2 + d_imag**2)  # |dg_t / da_k|, a real
    relative = (magnitude / magnitude[-1]).flip(0)
    for d in (1, 2, 5):
        assert math.isclose(relative[d].item(), law["predicted_relative"][0][d], rel_tol=1e-6)


def test_a_bidirectional_mixer_has_no_causal_law():
    tokens = torch.randint(0, 40, (1000,))
    model = build_model(ModelOptions(vocab_size=40, d_model=16, n_layers=1, n_seq=32, bk_mode="bidirectional"))
    assert decay_law(model, tokens, 32) is None
