"""The BK-Core's variants for remembering (``models.bk_variants``): the mixer with selective
couplings, the multiplicative read-outs and the outer-product write, held to the dense resolvent in float64 (forward and
every gradient), causal (the probe and a shared prefix), bounded at N = 65,536 in float32, and
described by the decay law."""

import cmath
import math

import pytest
import torch
import torch.nn.functional as F

from resnetbk import bk_core
from resnetbk.core.reference import dense_resolvent_diag
from resnetbk.flops.estimate import StepShape, step_ops
from resnetbk.measure.causality import probe_causality
from resnetbk.measure.decay_law import _channel_law, causal_resolvent_diagonal, steady_state_factor
from resnetbk.models import ModelOptions, build_model
from resnetbk.models.bk_variants import OuterWrite, SelectiveCoupling
from resnetbk.models.resnet_bk import LAPLACIAN_DIAG, BKMixer

VARIANTS = [("selective", "complex", "linear"), ("fixed", "gated", "linear"), ("selective", "gated", "linear"),
            ("fixed", "selective", "linear"), ("selective", "selective", "linear"), ("fixed", "complex", "outer"),
            ("selective", "selective", "outer"), ("selective_real", "complex", "linear"),
            ("selective_real", "selective", "outer"), ("selective_real_tied", "complex", "linear"),
            ("selective_real_tied", "selective", "outer")]


def _mixer(coupling: str, readout: str, write: str = "linear", *, d: int = 5, channels: int = 6) -> BKMixer:
    torch.manual_seed(0)
    scale = 0.5 if coupling.startswith("selective_real") else 8.0  # below the spectrum b_max is a scale: under 1 too
    mixer = BKMixer(d, channels, coupling=coupling, readout=readout, coupling_max=scale, write=write,
                    write_keys=3).double()
    for p in mixer.parameters():  # away from the initial values, so every term matters
        torch.nn.init.normal_(p, std=0.5) if p.dim() > 1 else p.data.add_(0.3 * torch.randn_like(p))
    return mixer


def _dense_mixer(mixer: BKMixer, h: torch.Tensor) -> torch.Tensor:
    """The mixer's forward with the BK-Core replaced by the dense inverse (the definition)."""
    b, n, d = h.shape
    flat = h.reshape(b * n, d)
    upper = mixer.upper(flat, b, n, h.dtype).expand(b, mixer.channels, n - 1)
    diag = mixer.diagonal(mixer.potential(h).view(b, n, -1), upper)
    g = dense_resolvent_diag(diag, upper, None, mixer.spectral_z(), "causal")
    scale = mixer.coupling.b_max if mixer.real else 1.0
    features = torch.cat([scale * g.real, scale * g.imag], dim=1).transpose(1, 2).reshape(b * n, -1)
    return mixer._read_out(features, flat).view(b, n, d)


@pytest.mark.parametrize("coupling,readout,write", VARIANTS)
def test_the_mixer_and_every_gradient_match_the_dense_resolvent_in_float64(coupling, readout, write):
    mixer = _mixer(coupling, readout, write)
    h = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)  # odd sizes
    ours, dense = mixer(h), _dense_mixer(mixer, h)
    torch.testing.assert_close(ours, dense, rtol=1e-10, atol=1e-12)
    weights = torch.randn_like(ours)
    inputs = [h, *mixer.parameters()]
    ours_grads = torch.autograd.grad((ours * weights).sum(), inputs)
    dense_grads = torch.autograd.grad((dense * weights).sum(), inputs)
    for (name, _), a, b in zip([("h", h), *mixer.named_parameters()], ours_grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    names = [name for name, _ in mixer.named_parameters()]
    own = (["coupling.proj.weight"] if coupling != "fixed" else []) + {
        "complex": [], "gated": ["query_gate.proj.weight"], "selective": ["read_gate.proj.weight"]}[readout] + (
        ["outer_write.conv.weight", "outer_write.values.weight", "outer_write.keys.weight"] if write == "outer" else [])
    for variant in own:
        assert float(ours_grads[1 + names.index(variant)].abs().sum()) > 0  # the variant's own parameters learn


@pytest.mark.parametrize("coupling,readout,write", VARIANTS)
def test_a_shared_prefix_gives_the_same_outputs(coupling, readout, write):
    mixer = _mixer(coupling, readout, write)
    h = torch.randn(1, 13, 5, dtype=torch.float64)
    other = h.clone()
    other[:, 6:] = torch.randn(1, 7, 5, dtype=torch.float64)
    a, b = mixer(h), mixer(other)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("coupling,readout,write", VARIANTS)
def test_every_variant_model_passes_the_causality_probe(coupling, readout, write):
    torch.manual_seed(0)
    model = build_model(ModelOptions(vocab_size=50, d_model=16, n_layers=2, n_seq=24, dropout=0.0, bk_channels=4,
                                     bk_coupling=coupling, bk_readout=readout, bk_write=write,
                                     bk_write_keys=2 if write == "outer" else 8))
    assert probe_causality(model, 50, 24).causal


def test_the_selective_resolvent_stays_bounded_at_65536_positions_in_float32():
    """``|G| <= 1 / Im z`` for every coupling in [0, b_max]; the exact backward stays finite."""
    torch.manual_seed(0)
    n, b_max = 65536, 32.0
    diag = (LAPLACIAN_DIAG + 3.0 * torch.tanh(torch.randn(2, 3, n))).requires_grad_()
    # Couplings that switch between cutting the chain (0), the Laplacian's 1 and the bound.
    upper = (b_max * torch.rand(2, 3, n - 1) ** 0.3).requires_grad_()
    upper.data[:, :, ::97] = 0.0
    g = bk_core(diag, upper, None, 1j, mode="causal")
    assert torch.isfinite(g).all() and float(g.detach().abs().max()) <= 1.0 + 1e-5
    g.real.sum().backward()
    assert torch.isfinite(diag.grad).all() and torch.isfinite(upper.grad).all()
    # And float32 keeps float64's answer over the whole length (measured: 2e-7 relative).
    diag64, upper64 = diag.detach().double().requires_grad_(), upper.detach().double().requires_grad_()
    g64 = bk_core(diag64, upper64, None, 1j, mode="causal")
    g64.real.sum().backward()
    assert float((g.detach() - g64.detach()).abs().max()) < 1e-5
    for ours, exact in ((diag.grad, diag64.grad), (upper.grad, upper64.grad)):
        assert float((ours - exact).abs().max() / exact.abs().max()) < 1e-5


@pytest.mark.parametrize("coupling", ["selective_real", "selective_real_tied"])
def test_the_real_resolvent_stays_real_and_under_one_over_b_max_at_65536_positions_in_float32(coupling):
    """Below the spectrum: ``|G| <= 1 / b_max`` for every coupling in [0, b_max] and every write, G
    nearly real (Im z = 1e-8 b_max), the exact backward finite, float32 on float64's answer."""
    torch.manual_seed(0)
    n, b_max = 65536, 0.25
    mixer = BKMixer(4, 3, coupling=coupling, coupling_max=b_max)
    upper = b_max * torch.rand(2, 3, n - 1) ** 0.3
    upper[:, :, ::97] = 0.0
    v = 3.0 * torch.tanh(2 * torch.randn(2, n, 3))
    v[:, ::5] = 0.0  # rests between the writes
    upper, v = upper.requires_grad_(), v.requires_grad_()
    diag = mixer.diagonal(v, upper)
    g = bk_core(diag, upper, None, mixer.spectral_z(), mode="causal")
    assert torch.isfinite(g).all() and float(g.detach().abs().max()) <= (1 + 1e-5) / b_max
    assert float(g.detach().real.min()) > 0 and float(g.detach().imag.abs().max()) < 1e-6 / b_max
    g.real.sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(upper.grad).all()
    upper64, v64 = upper.detach().double().requires_grad_(), v.detach().double().requires_grad_()
    g64 = bk_core(mixer.diagonal(v64, upper64), upper64, None, mixer.spectral_z(), mode="causal")
    g64.real.sum().backward()
    assert float((g.detach() - g64.detach()).abs().max()) < 1e-5 / b_max
    for ours, exact in ((v.grad, v64.grad), (upper.grad, upper64.grad)):
        assert float((ours - exact).abs().max() / exact.abs().max()) < 1e-4


def test_the_real_resolvent_keeps_its_couplings_share_without_turning():
    """At rest (no write) and a constant coupling b, ``g = 1 / b_max`` exactly, so a channel keeps
    ``(b / b_max)^2`` per position and does not turn; the couplings start at retentions
    ``exp(-1/tau)``, tau log-spaced over [1, 1000]; a learnt z is refused."""
    mixer = BKMixer(8, 1, coupling="selective_real", coupling_max=4.0)
    torch.nn.init.zeros_(mixer.v_proj.weight)
    torch.nn.init.zeros_(mixer.v_proj.bias)
    torch.nn.init.zeros_(mixer.coupling.proj.weight)
    with torch.no_grad():
        mixer.coupling.offset.fill_(0.0)  # b = 4 * sigmoid(0) = 2
    law = _channel_law(mixer, torch.randn(2, 64, 8))
    (decay,), (turn,), (spread,) = law["decay_per_position"], law["turn_per_position_deg"], law["turn_spread_deg"]
    assert math.isclose(1 / decay, (2 / 4) ** 2, rel_tol=1e-3) and abs(turn) < 0.01 and spread < 0.01
    # With writes (a potential that varies) the factor stays real and positive: still no turn.
    torch.nn.init.normal_(mixer.v_proj.weight, std=0.5)
    law = _channel_law(mixer, torch.randn(2, 64, 8))
    assert abs(law["turn_per_position_deg"][0]) < 0.01 and law["turn_spread_deg"][0] < 0.01
    torch.nn.init.zeros_(mixer.v_proj.weight)
    # A long memory is not capped by z's distance from the real axis: 0.999 kept per position.
    fraction = math.sqrt(0.999)
    with torch.no_grad():
        mixer.coupling.offset.fill_(math.log(fraction / (1 - fraction)))
    (decay,) = _channel_law(mixer, torch.randn(2, 64, 8))["decay_per_position"]
    assert math.isclose(1 / decay, 0.999, rel_tol=1e-4)
    start = SelectiveCoupling(8, 4, 4.0, real=True)(torch.zeros(1, 8))[0].detach().double()
    tau = -1 / torch.log((start / 4.0) ** 2)
    torch.testing.assert_close(tau, torch.logspace(0, 3, 4, dtype=torch.float64), rtol=1e-4, atol=0)
    model = build_model(ModelOptions(vocab_size=50, d_model=8, n_layers=1, n_seq=16, bk_channels=4,
                                     bk_coupling="selective_real", bk_coupling_max=4.0))
    torch.testing.assert_close(model.blocks[0].bk.coupling(torch.zeros(1, 8))[0].detach().double(), start)
    mixer.shift = torch.nn.Module()
    with pytest.raises(ValueError, match="selective_real"):
        mixer.spectral_z()


def test_the_tied_write_is_scaled_by_what_its_position_forgets():
    """``selective_real_tied``: the write ``|v_k|`` enters the diagonal times ``1 - (b_{k-1} / b_max)^2``
    (Mamba's discretised step: a position that keeps its past writes nothing, one that forgets
    writes fully); position 0 (no link in) writes fully. Where every link keeps all (b = b_max),
    nothing after position 0 reaches G, whatever the potentials; the untied variant is moved by them."""
    torch.manual_seed(0)
    b_max, n = 0.5, 9
    tied = BKMixer(4, 2, coupling="selective_real_tied", coupling_max=b_max).double()
    untied = BKMixer(4, 2, coupling="selective_real", coupling_max=b_max).double()
    v = torch.randn(1, n, 2, dtype=torch.float64)
    upper = b_max * torch.rand(1, 2, n - 1, dtype=torch.float64)
    keep = F.pad((upper / b_max) ** 2, (1, 0))
    torch.testing.assert_close(tied.diagonal(v, upper) - untied.diagonal(v, upper),
                               -keep * v.transpose(1, 2).abs(), rtol=0, atol=1e-15)
    full = torch.full((1, 2, n - 1), b_max, dtype=torch.float64)
    for mixer, moved in ((tied, False), (untied, True)):
        v = torch.randn(1, n, 2, dtype=torch.float64, requires_grad=True)
        g = bk_core(mixer.diagonal(v, full), full, None, mixer.spectral_z(), mode="causal")
        (grad,) = torch.autograd.grad(g.real.sum(), v)
        assert float(grad[:, 0].abs().min()) > 0  # the first position writes in both
        assert (float(grad[:, 1:].abs().max()) > 1e-3) == moved
    # A saturated coupling (b = b_max) rounds 1 - b^2/b_max^2 below 0 in float32 for some b_max (0.1):
    # the write is clamped at 0, so it never lowers the diagonal under its rest value.
    small = BKMixer(4, 2, coupling="selective_real_tied", coupling_max=0.1)
    rest = torch.full((1, 2, n - 1), 0.1)
    written = small.diagonal(torch.randn(1, n, 2), rest) - small.diagonal(torch.zeros(1, n, 2), rest)
    assert float(written.min()) >= 0.0
    assert ModelOptions(bk_coupling="selective_real_tied", bk_coupling_max=0.25).bk_coupling_max == 0.25
    with pytest.raises(ValueError, match="bk_coupling: selective_real_tied keeps .* Set bk_mode: causal"):
        ModelOptions(bk_coupling="selective_real_tied", bk_mode="bidirectional")


def test_the_couplings_start_log_spaced_from_the_laplacians_one_and_survive_the_models_init():
    coupling = SelectiveCoupling(8, 5, 32.0)
    start = coupling(torch.zeros(1, 8))[0].detach()
    torch.testing.assert_close(start, torch.logspace(0, math.log10(8.0), 5), rtol=1e-5, atol=0)
    assert float(SelectiveCoupling(8, 1, 32.0)(torch.zeros(1, 8)).detach()) == pytest.approx(1.0)
    model = build_model(ModelOptions(vocab_size=50, d_model=8, n_layers=1, n_seq=16, bk_channels=5,
                                     bk_coupling="selective"))
    torch.testing.assert_close(model.blocks[0].bk.coupling(torch.zeros(1, 8))[0].detach(), start)
    with pytest.raises(ValueError, match="b_max"):
        SelectiveCoupling(8, 2, 1.0)


@pytest.mark.parametrize("readout,gate", [("gated", "query_gate"), ("selective", "read_gate")])
@pytest.mark.parametrize("init", ["normal", "torch", "uniform"])
def test_the_gated_read_outs_start_as_the_plain_one_under_every_init(init, readout, gate):
    torch.manual_seed(0)
    options = dict(vocab_size=50, d_model=16, n_layers=1, n_seq=16, bk_channels=2, dropout=0.0, init=init)
    plain, gated = build_model(ModelOptions(**options)), build_model(ModelOptions(**options, bk_readout=readout))
    gated.load_state_dict(plain.state_dict(), strict=False)
    h = torch.randn(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(gated.blocks[0].bk(h), plain.blocks[0].bk(h), rtol=0, atol=0)
    loss = gated.blocks[0].bk(h).square().sum()
    loss.backward()
    assert float(getattr(gated.blocks[0].bk, gate).proj.weight.grad.abs().sum()) > 0  # and it learns from there


def test_the_link_into_position_k_is_set_by_the_input_at_k():
    """b_j (the link j -> j+1) comes from h_{j+1}: with the potential fixed, changing h_k alone
    changes the output at k and leaves k-1 alone (b_j from h_j would leave k alone too)."""
    torch.manual_seed(0)
    mixer = BKMixer(6, 2, coupling="selective", coupling_max=8.0).double()
    torch.nn.init.zeros_(mixer.v_proj.weight)  # the potential no longer depends on the input
    torch.nn.init.normal_(mixer.coupling.proj.weight, std=1.0)
    h = torch.randn(1, 9, 6, dtype=torch.float64)
    other = h.clone()
    other[0, 5] += 1.0
    with torch.no_grad():
        a, b = mixer(h), mixer(other)
    torch.testing.assert_close(a[0, :5], b[0, :5], rtol=0, atol=0)
    assert not torch.allclose(a[0, 5], b[0, 5])


def test_the_decay_law_counts_the_selective_couplings():
    """With couplings kap_j, the prediction is prod_{j=t-d..t-1} kap_j |g_j|^2, and the BK-Core's
    own gradient agrees."""
    torch.manual_seed(0)
    mixer = BKMixer(8, 1, coupling="selective", coupling_max=8.0)
    torch.nn.init.zeros_(mixer.v_proj.weight)
    torch.nn.init.zeros_(mixer.v_proj.bias)  # potential 0: a_k = -2
    torch.nn.init.normal_(mixer.coupling.proj.weight, std=1.0)
    h = torch.randn(1, 12, 8)
    law = _channel_law(mixer, h)
    b = mixer.upper(h.reshape(12, 8), 1, 12, torch.float64)[0, 0].detach()  # (11,)
    a = torch.full((12,), -2.0, dtype=torch.float64, requires_grad=True)
    g_all = causal_resolvent_diagonal(a.detach(), 1j, b.square())
    c = g_all.abs().square()[:11] * b.square()
    for d in (1, 2, 5, 11):
        assert math.isclose(law["predicted_relative"][0][d], float(c[11 - d:11].prod()), rel_tol=1e-6)
    g = bk_core(a, b, None, 1j, mode="causal", backend="torch")[-1]
    d_real, = torch.autograd.grad(g.real, a, retain_graph=True)
    d_imag, = torch.autograd.grad(g.imag, a)
    magnitude = torch.sqrt(d_real**2 + d_imag**2)
    relative = (magnitude / magnitude[-1]).flip(0)
    for d in (1, 2, 5):
        assert math.isclose(relative[d].item(), law["predicted_relative"][0][d], rel_tol=1e-5)


def test_the_laws_summary_per_position_is_the_steady_state_past_the_start():
    """A constant coupling b = 32 at zero potential: the start's transient (kap_0 |g_0|^2 = b^2 / 5)
    stays out of the summary, which is the steady state's contraction (1 - 1/(2b))^2."""
    mixer = BKMixer(8, 1, coupling="selective", coupling_max=64.0)
    torch.nn.init.zeros_(mixer.v_proj.weight)
    torch.nn.init.zeros_(mixer.v_proj.bias)
    torch.nn.init.zeros_(mixer.coupling.proj.weight)
    with torch.no_grad():
        mixer.coupling.offset.fill_(0.0)  # b = 64 * sigmoid(0) = 32 everywhere
    law = _channel_law(mixer, torch.randn(2, 256, 8))
    (decay,) = law["decay_per_position"]
    assert math.isclose(1 / decay, (1 - 1 / 64) ** 2, rel_tol=0.01)
    (mean,) = law["mean_contraction"]
    assert mean < 1.0
    # The kept part turns by the steady state's angle each position, the same at every position
    # (past a start that fades as 0.97^k: a longer window).
    law = _channel_law(mixer, torch.randn(1, 1024, 8))
    (turn,), (spread,) = law["turn_per_position_deg"], law["turn_spread_deg"]
    expected = math.degrees(cmath.phase(steady_state_factor(-2.0, 32.0 ** 2, 1j)))
    assert abs(turn - expected) < 0.5 and abs(abs(turn) - 180) < 5 and spread < 0.5


@pytest.mark.parametrize("coupling", ["selective", "selective_real", "selective_real_tied"])
def test_the_turn_is_the_recursions_own_factor_from_one_position_to_the_next(coupling):
    """With couplings that vary along the sequence, the reported turn is the circular mean of the
    finite-difference factor dg_{k+1} / dg_k (kap_k g_{k+1}^2, not kap_k g_k^2), over the steady half."""
    mixer = _mixer(coupling, "complex").float()  # the law reads the mixer in float32, then recurs in float64
    h = torch.randn(3, 40, 5)
    law = _channel_law(mixer, h)
    with torch.no_grad():
        upper = mixer.upper(h.reshape(-1, 5), 3, 40, torch.float64).expand(3, 6, 39)
        a = mixer.diagonal(mixer.potential(h).view(3, 40, -1).double(), upper).to(torch.complex128)
    kap, z = upper.square(), mixer.spectral_z()
    g = causal_resolvent_diagonal(a, z, kap)
    assert float(kap.std(-1).max()) > 0.01  # the couplings do vary
    step = 1e-7
    moved = 1.0 / (a[..., 1:] - z - kap * (g[..., :-1] + step))
    factor = ((moved - g[..., 1:]) / step)[..., 20:39]  # positions N/2 .. N-2, as the law's
    unit = (factor / factor.abs()).mean(dim=(0, 2))
    expected = torch.rad2deg(unit.angle())
    torch.testing.assert_close(torch.tensor(law["turn_per_position_deg"], dtype=torch.float64), expected,
                               rtol=0, atol=1e-3)
    assert all(x >= 0 for x in law["turn_spread_deg"])


@pytest.mark.parametrize("a,kap,z", [(-2.0, 1.0, 1j), (-5.0, 16.0, 1j), (1.0, 128.0 ** 2, 1j), (-2.0, 1.0, 0.3j),
                                     (-2.0, 1.0, -4.5), (0.5, 4.0, -3.6)])
def test_the_steady_state_factor_is_the_recursions_own(a, kap, z):
    """Against the recursion run to its fixed point and its derivative there; below the spectrum
    (z real, under a - 2 sqrt(kap)) the factor is real and positive: a decay that does not turn."""
    g = 0j
    for _ in range(200_000):
        g = 1 / (a - z - kap * g)
    step = 1e-7
    derivative = (1 / (a - z - kap * (g + step)) - 1 / (a - z - kap * g)) / step
    factor = steady_state_factor(a, kap, z)
    assert abs(factor) < 1 and cmath.isclose(factor, kap * g * g, rel_tol=1e-6)
    assert cmath.isclose(factor, derivative, rel_tol=1e-4, abs_tol=1e-9)
    if isinstance(z, float):
        assert factor.imag == 0 and factor.real > 0
    with pytest.raises(ValueError, match="kap: expected a positive coupling"):
        steady_state_factor(a, 0.0, z)


def test_the_outer_write_is_a_value_times_a_key_read_from_the_last_four_positions():
    torch.manual_seed(0)
    write = OuterWrite(6, 12, 3)  # 4 values x 3 keys
    torch.nn.init.normal_(write.keys.weight, std=0.5)
    h = torch.randn(2, 11, 6, dtype=torch.float64)
    write = write.double()
    raw = write(h).view(2, 11, 4, 3)
    u = torch.nn.functional.silu(write.conv(h.transpose(1, 2))[..., :11].transpose(1, 2))
    torch.testing.assert_close(raw, write.values(u)[..., :, None] * write.keys(u)[..., None, :])
    # Position 7 reads positions 4..7: a change at 3 leaves it alone, one at 4 does not.
    for changed, moves in ((3, False), (4, True)):
        other = h.clone()
        other[:, changed] += 1.0
        assert torch.allclose(write(other).view(2, 11, -1)[:, 7], raw.reshape(2, 11, -1)[:, 7]) != moves


@pytest.mark.parametrize("init", ["normal", "torch", "uniform"])
def test_the_outer_writes_keys_start_at_one_under_every_init(init):
    """Each key's channels start as the plain write of their value feature."""
    model = build_model(ModelOptions(vocab_size=50, d_model=8, n_layers=1, n_seq=16, bk_channels=6, init=init,
                                     bk_write="outer", bk_write_keys=3))
    write = model.blocks[0].bk.outer_write
    h = torch.randn(2, 16, 8)
    u = torch.nn.functional.silu(write.conv(h.transpose(1, 2))[..., :16].transpose(1, 2))
    torch.testing.assert_close(write.keys(u), torch.ones(2, 16, 3), rtol=0, atol=0)
    raw = write(h).view(2, 16, 2, 3)
    torch.testing.assert_close(raw, write.values(u)[..., None].expand_as(raw), rtol=0, atol=0)
    assert float(raw.detach().abs().max()) > 0


def test_the_sparse_gate_with_the_outer_write_reads_the_gated_off_positions_inputs():
    """The gated path (the sparse BK-Core's) computes the outer write over every position and
    keeps the kept rows' potentials: keeping all of them gives the ungated mixer; with some gated
    off, the kept ones still read their gated-off neighbours through the convolution, and the
    result is the dense resolvent of exactly those potentials."""
    mixer = _mixer("fixed", "complex", "outer")
    h = torch.randn(2, 9, 5, dtype=torch.float64)
    plain = mixer(h)
    every = torch.ones(18, dtype=torch.bool)
    mixer.gate = lambda flat: (every, torch.ones(18, dtype=flat.dtype))
    torch.testing.assert_close(mixer(h), plain, rtol=1e-12, atol=1e-14)
    keep = torch.tensor([True, False, True, True, False] * 3 + [True, False, True])
    weight = torch.linspace(0.5, 1.0, 18, dtype=torch.float64)
    mixer.gate = lambda flat: (keep, weight)
    ours = mixer(h).reshape(18, 5)
    v = torch.where(keep[:, None], mixer.potential(h) * weight[:, None], torch.zeros(()))  # (18, C)
    diag = (LAPLACIAN_DIAG + v.view(2, 9, -1)).transpose(1, 2)
    g = dense_resolvent_diag(diag, mixer.upper(h.reshape(18, 5), 2, 9, diag.dtype).expand(2, 6, 8), None, 1j, "causal")
    features = torch.cat([g.real, g.imag], dim=1).transpose(1, 2).reshape(18, -1)
    expected = torch.where(keep[:, None], mixer._read_out(features, h.reshape(18, 5)) * weight[:, None], torch.zeros(()))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    # A gated-off position's input still reaches the next kept position (position 2 reads 1).
    other = h.clone()
    other[0, 1] += 1.0
    assert not torch.allclose(mixer(other)[0, 2], mixer(h)[0, 2])


def test_the_decay_law_reads_the_outer_writes_potentials():
    mixer = _mixer("selective", "selective", "outer").float()
    h = torch.randn(2, 16, 5)
    law = _channel_law(mixer, h)
    assert len(law["decay_per_position"]) == 6 and all(math.isfinite(x) for x in law["decay_per_position"])
    # Its prediction is the product of the contractions of the outer write's own potentials.
    with torch.no_grad():
        v = mixer.potential(h).view(2, 16, -1).double()
        kap = mixer.upper(h.reshape(32, 5), 2, 16, torch.float64).square()
    g = causal_resolvent_diagonal((LAPLACIAN_DIAG + v).transpose(1, 2), 1j, kap)  # (2, C, 16)
    c = g.abs().square()[..., :15] * kap
    for d in (1, 3, 7):  # per channel, the mean over the sequences of the last d positions' product
        for channel in range(6):
            expected = float(c[:, channel, 15 - d:15].prod(-1).mean())
            assert math.isclose(law["predicted_relative"][channel][d], expected, rel_tol=1e-4)


def test_bad_variant_options_are_named_errors():
    with pytest.raises(ValueError, match="bk_coupling"):
        ModelOptions(bk_coupling="learned")
    with pytest.raises(ValueError, match="bk_readout"):
        ModelOptions(bk_readout="bilinear")
    with pytest.raises(ValueError, match="bk_coupling_max"):
        ModelOptions(bk_coupling_max=1.0)
    with pytest.raises(ValueError, match="coupling"):
        BKMixer(8, 1, coupling="learned")
    with pytest.raises(ValueError, match="variants of ResNet-BK's mixer"):
        ModelOptions(architecture="transformer", bk_coupling="selective")
    with pytest.raises(ValueError, match="no_mixer"):
        ModelOptions(no_mixer=True, bk_readout="gated")
    with pytest.raises(ValueError, match="bk_coupling_max: bounds the selective couplings"):
        ModelOptions(bk_coupling_max=64.0)
    with pytest.raises(ValueError, match="bk_write"):
        ModelOptions(bk_write="quadratic")
    with pytest.raises(ValueError, match="bk_write_keys: the outer-product write needs bk_channels"):
        ModelOptions(bk_channels=12, bk_write="outer", bk_write_keys=5)
    with pytest.raises(ValueError, match="bk_write_keys: sets the outer-product write's keys"):
        ModelOptions(bk_write_keys=4)
    with pytest.raises(ValueError, match="bk_write_keys"):
        OuterWrite(8, 12, 5)
    with pytest.raises(ValueError, match="variants of ResNet-BK's mixer"):
        ModelOptions(architecture="lstm", bk_write="outer")
    with pytest.raises(ValueError, match="architecture 'lstm' has no BK-Core"):
        ModelOptions(architecture="lstm", bk_write_keys=4)
    with pytest.raises(ValueError, match="bk_write_keys"):
        ModelOptions(bk_write_keys=8.0)
    # Below the spectrum b_max is a scale (under 1 is fine, 0 is not), and only the causal recursion is bounded.
    assert ModelOptions(bk_coupling="selective_real", bk_coupling_max=0.25).bk_coupling_max == 0.25
    with pytest.raises(ValueError, match="bk_coupling_max: expected a positive number"):
        ModelOptions(bk_coupling="selective_real", bk_coupling_max=0.0)
    with pytest.raises(ValueError, match="bk_coupling: selective_real keeps .* Set bk_mode: causal"):
        ModelOptions(bk_coupling="selective_real", bk_mode="bidirectional")
    with pytest.raises(ValueError, match="b_max: expected a positive scale"):
        SelectiveCoupling(8, 2, 0.0, real=True)


@pytest.mark.parametrize("variant", [dict(bk_coupling="selective"), dict(bk_write="outer", bk_channels=8)])
def test_the_closed_form_flops_estimate_refuses_the_variants(variant):
    options = ModelOptions(vocab_size=50, d_model=8, n_layers=1, n_seq=16, **variant)
    with pytest.raises(ValueError, match="FlopsTracer"):
        step_ops(StepShape(options, batch=2))
