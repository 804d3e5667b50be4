"""The peers: the LSTM and Mamba language models (parameters matched to ResNet-BK, causal,
priced by the FLOPs tracer). Their benchmark run: tests/bench/test_bench.py."""

import pytest
import torch

from helpers import make_config
from resnetbk.bench import model_config
from resnetbk.flops import FlopsTracer
from resnetbk.measure.causality import probe_causality
from resnetbk.models import ModelOptions, build_model, lstm_hidden, lstm_layer_parameters, mamba_layer_parameters
from resnetbk.models.parameter_groups import parameter_groups
from resnetbk.models.recurrent import mamba_cuda_available

PEERS = ("lstm", "mamba")


@pytest.mark.parametrize("d_model, n_layers", [(64, 4), (32, 2), (128, 6), (48, 3)])
@pytest.mark.parametrize("arch", PEERS)
def test_non_embedding_parameters_match_resnet_bk_within_10_percent(arch, d_model, n_layers):
    reference = build_model(ModelOptions("resnet_bk", 300, d_model, n_layers, 16)).parameter_counts()["non_embedding"]
    peer = build_model(ModelOptions(arch, 300, d_model, n_layers, 16)).parameter_counts()["non_embedding"]
    assert abs(peer / reference - 1) < 0.10, (peer, reference)


@pytest.mark.parametrize("d_model, hidden", [(16, 16), (16, 23), (64, 95)])
def test_lstm_parameter_formula_counts_the_module(d_model, hidden):
    model = build_model(ModelOptions("lstm", 50, d_model, 2, 8, lstm_hidden=hidden))
    assert sum(p.numel() for p in model.blocks[0].parameters()) == lstm_layer_parameters(d_model, hidden)
    assert (model.blocks[0].projection is None) == (hidden == d_model)
    assert lstm_hidden(ModelOptions("lstm", 50, d_model, 2, 8, lstm_hidden=hidden)) == hidden


@pytest.mark.parametrize("arch", PEERS)
def test_peers_have_no_position_embedding_and_take_any_length(arch):
    model = build_model(ModelOptions(arch, 60, 16, 2, 12))
    assert model.position_embedding is None
    for n in (1, 5, 7, 12):
        assert model(torch.randint(60, (3, n))).shape == (3, n, 60)


@pytest.mark.parametrize("arch", PEERS)
def test_peers_pass_the_causality_probe_and_shared_prefixes_agree(arch):
    torch.manual_seed(0)
    model = build_model(ModelOptions(arch, 200, 32, 2, 24)).eval()
    result = probe_causality(model, 200, 24)
    assert result.causal, result.summary()
    tokens = torch.randint(200, (2, 24))
    other = tokens.clone()
    other[:, 13:] = torch.randint(200, (2, 11))  # the same first 13 tokens, a different future
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :13], model(other)[:, :13], rtol=1e-5, atol=1e-6)


def test_mamba_keeps_its_step_size_init_and_its_a_log_is_not_decayed():
    model = build_model(ModelOptions("mamba", 40, 16, 2, 8))
    mixer = model.blocks[0].layers[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)  # the model-wide init zeroes biases; Mamba's must survive
    assert dt.min() >= 1e-4 * 0.99 and dt.max() <= 0.1 * 1.01 and dt.std() > 0
    decayed = {id(p) for p in parameter_groups(model, False, 0.1)[0]["params"]}
    assert id(mixer.A_log) not in decayed and id(mixer.in_proj.weight) in decayed


@pytest.mark.parametrize("arch", PEERS)
def test_a_training_step_of_the_peers_is_fully_priced(arch):
    model = build_model(ModelOptions(arch, 80, 16, 2, 16))
    tokens = torch.randint(80, (2, 16))
    with FlopsTracer() as tracer:
        nll, _ = model(tokens, tokens)
        nll.backward()
    report = tracer.report()
    assert report["unknown"] == {} and report["by_phase"]["backward"] > report["by_phase"]["forward"] > 0


def test_mamba_kernel_choice_is_validated():
    assert model_config("mamba", make_config(device="cpu")).model.architecture == "mamba"
    with pytest.raises(ValueError, match="mamba_kernel: expected one of"):
        make_config(mamba_kernel="triton")
    if not mamba_cuda_available():
        from resnetbk.bench.config import model_options

        config = model_config("mamba", make_config(mamba_kernel="mamba_ssm"))
        with pytest.raises(ValueError, match="mamba_kernel: 'mamba_ssm' needs a CUDA device"):
            model_options(config, 50)


@pytest.mark.skipif(not mamba_cuda_available(), reason="mamba-ssm's CUDA kernel needs a GPU and the mamba-ssm package")
def test_mamba_ssm_kernel_gives_mambapy_outputs_and_gradients():
    torch.manual_seed(0)
    model = build_model(ModelOptions("mamba", 100, 64, 2, 128, dropout=0.0)).cuda()
    tokens = torch.randint(100, (4, 128), device="cuda")
    out = {}
    for cuda in (False, True):
        for block in model.blocks:
            block.use_cuda_kernels(cuda)
        model.zero_grad()
        nll, _ = model(tokens, tokens)
        nll.backward()
        out[cuda] = (nll.detach(), model.blocks[0].layers[0].mixer.in_proj.weight.grad.clone())
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("d_model, inner, d_state", [(16, 32, 16), (64, 131, 16), (40, 50, 8)])
def test_mamba_parameter_formula_counts_the_module(d_model, inner, d_state):
    model = build_model(ModelOptions("mamba", 50, d_model, 1, 8, mamba_inner=inner, mamba_d_state=d_state))
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in model.blocks[0].layers]
    assert per_layer == [mamba_layer_parameters(d_model, inner, d_state)] * 2
