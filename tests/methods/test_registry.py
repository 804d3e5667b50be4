"""The method registry: the original twelve flags, what derives from it, and the rules every flag obeys."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from helpers import make_config
from resnetbk import methods
from resnetbk.bench import BenchmarkConfig, model_config
from resnetbk.bench.options import methods_help
from resnetbk.bench.recipe import make_model
from resnetbk.measure.causality import probe_causality
from resnetbk.methods import Event
from resnetbk.train.events import Listeners

ORIGINAL = {
    "use_analytic_gradient": "50x backward pass", "use_koopman": "100x gradient cost",
    "use_physics_informed": "10x fewer training steps", "use_quantization": "4-8x model size",
    "use_pruning": "4x model size", "use_mixed_precision": "2x speed, 50% memory", "use_act": "30% fewer layers",
    "use_multi_scale": "2x in the middle layers", "use_sparse_bk": "1.8x at 50% sparsity",
    "use_early_exit": "variable", "use_curriculum": "30% fewer steps", "use_active_learning": "50% less data",
}
MODEL_CHANGING = [m.flag for m in methods.REGISTRY if m.changes_model]
RESNET_BK_ONLY = [m.flag for m in methods.REGISTRY if m.architectures == ("resnet_bk",)]


def test_registry_holds_the_original_twelve_claims_in_order_then_our_own():
    assert methods.ORIGINAL_FLAGS == tuple(ORIGINAL)
    assert methods.FLAGS[:12] == tuple(ORIGINAL)
    assert {m.flag: m.claim for m in methods.REGISTRY if m.original} == ORIGINAL
    ours = [m for m in methods.REGISTRY if not m.original]
    assert [m.flag for m in ours] == ["use_spectral_z"]
    for m in ours:
        assert m.claim.startswith("ours: ")  # never passed off as the original benchmark's
    for m in methods.REGISTRY:
        assert m.acts_on and m.paper, m.flag


def test_config_fields_cli_help_and_full_model_derive_from_the_registry(monkeypatch):
    monkeypatch.setattr("resnetbk.methods.mixed_precision.slow_bf16_reason", lambda: None)  # a CPU with native bf16
    settings = BenchmarkConfig().methods
    help_text = methods_help()
    assert list(settings) == list(methods.FLAGS)
    for m in methods.REGISTRY:
        fields = {f.name: f.default for f in dataclasses.fields(settings[m.flag])}
        assert fields == {"enabled": m.default, **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in m.hyperparameters.items()}}
        assert m.flag in help_text and m.claim in help_text
    full = model_config("resnet_bk_full", BenchmarkConfig())
    assert [f for f in methods.FLAGS if full.enabled(f)] == list(methods.ORIGINAL_FLAGS)
    assert not full.enabled("use_spectral_z")
    baseline = model_config("resnet_bk_baseline", BenchmarkConfig())
    assert not any(baseline.enabled(f) for f in methods.FLAGS)


@pytest.mark.parametrize("flag", RESNET_BK_ONLY)
def test_resnet_bk_methods_refuse_the_transformer(flag):
    others = {f: False for f in methods.FLAGS}
    with pytest.raises(ValueError, match=f"{flag}: acts on .*'transformer'"):
        make_config(architecture="transformer", **{**others, flag: True})


def test_an_incompatible_pair_is_a_value_error_naming_both(monkeypatch):
    monkeypatch.setattr(methods.BY_FLAG["use_act"], "incompatible_with", ("use_early_exit",))
    make_config(use_act=True)
    with pytest.raises(ValueError, match="use_act and use_early_exit cannot be on together"):
        make_config(use_act=True, use_early_exit=True)


@pytest.mark.parametrize("field,value,message", [
    ("act_threshold", 0.0, "act_threshold: expected a number in \\(0.0, 1.0\\]"),
    ("ponder_weight", -1.0, "ponder_weight: expected a non-negative number, got -1.0"),
    ("sparse_bk_target", 1.0, "sparse_bk_target: expected a number in \\[0.0, 1.0\\)"),
    ("exit_loss_fraction", 0.0, "exit_loss_fraction"),
    ("exit_thresholds", [0.5, 2.0], "exit_thresholds: expected a non-empty list"),
    ("n_layers", 2, "use_multi_scale: needs n_layers >= 3"),
])
def test_hyperparameters_are_checked_with_named_errors(field, value, message):
    flag = {"act_threshold": "use_act", "ponder_weight": "use_act", "sparse_bk_target": "use_sparse_bk",
            "exit_loss_fraction": "use_early_exit", "exit_thresholds": "use_early_exit",
            "n_layers": "use_multi_scale"}[field]
    with pytest.raises(ValueError, match=message):
        make_config(**{flag: True, field: value})


def _model(config, vocab=60, seed=0):
    torch.manual_seed(seed)
    return make_model(config, vocab)


def _config(**flags):
    base = {f: False for f in methods.FLAGS}
    base.update(flags)
    return make_config(d_model=16, n_layers=4, n_seq=24, dropout=0.0, **base)


ALL_ON = {f: True for f in methods.FLAGS}


@pytest.mark.parametrize("flags", [{f: True} for f in MODEL_CHANGING] + [ALL_ON], ids=MODEL_CHANGING + ["all"])
def test_every_method_keeps_the_model_causal(flags):
    config = _config(**flags)
    model = _model(config)
    assert probe_causality(model, 60, 24).causal
    # Two sequences that share a 13-token prefix give identical logits on it (eval mode: ACT
    # halting and confident early exit are active there; a low threshold makes tokens exit).
    if model.depth is not None and model.depth.confidence is not None:
        model.depth.exit_threshold = 0.5
    model.eval()
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(60, (3, 24), generator=gen)
    b = a.clone()
    b[:, 13:] = torch.randint(60, (3, 11), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :13], model(b)[:, :13], rtol=0, atol=1e-6)


#: What each model-changing method's own work looks like in a traced training step: components
#: (module names, from the deterministic attribution) or ops that only it runs. A method that
#: were ignored, or that changed the step some other way, would not show its own evidence.
EVIDENCE = {
    "use_analytic_gradient": ("op", "resnetbk.bk_core_backward"),
    "use_physics_informed": ("component", "energies."),
    "use_quantization": ("op", "aten._fused_moving_avg_obs_fq_helper"),
    "use_pruning": ("component", ".parametrizations.weight"),
    "use_act": ("component", "depth.halting."),
    "use_multi_scale": ("component", "shortened.shorten"),
    "use_sparse_bk": ("component", ".bk.gate.score"),
    "use_early_exit": ("component", "depth.confidence."),
    "use_spectral_z": ("component", ".bk.shift"),
}


def test_every_model_changing_method_has_its_evidence_listed():
    assert set(EVIDENCE) == set(MODEL_CHANGING)


def _shows(report: dict, kind: str, what: str) -> bool:
    names = report["by_op"] if kind == "op" else report["by_component"]
    return any((name == what) if kind == "op" else (what in name) for name in names)


@pytest.mark.parametrize("flag", MODEL_CHANGING)
def test_each_flag_changes_what_is_computed(flag):
    """Each method's own work appears in the traced step exactly when its flag is on."""
    from resnetbk.flops import FlopsTracer

    reports = {}
    for on in (False, True):
        config = _config(**{flag: on})
        model = _model(config)
        tracer = FlopsTracer()
        tokens = torch.randint(60, (4, 24), generator=torch.Generator().manual_seed(0))
        model.train()
        with tracer:
            nll, hidden = model(tokens, tokens)
            # The methods' loss terms too (Koopman and physics-informed act through them).
            state = SimpleNamespace(model=model, hidden=hidden, targets=tokens, aux_losses=model.aux_losses(),
                                    loss_terms={})
            Listeners(methods.listeners_for(config)).fire(Event.LOSS, state)
            loss = nll + sum(model.aux_losses().values()) + sum(state.loss_terms.values())
            loss.backward()
        reports[on] = tracer.report()
    kind, what = EVIDENCE[flag]
    assert _shows(reports[True], kind, what) and not _shows(reports[False], kind, what)
    assert reports[True]["total"] != reports[False]["total"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("flags", [{f: True} for f in MODEL_CHANGING] + [ALL_ON], ids=MODEL_CHANGING + ["all"])
def test_every_method_runs_through_the_torch_path_on_cuda_like_on_cpu(flags):
    config = _config(**flags)
    cpu = _model(config).double()
    gpu = _model(config).double().cuda()
    x = torch.randint(60, (2, 24), generator=torch.Generator().manual_seed(4))
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        logits = model(x.to(device))
        (logits.logsumexp(-1).mean() + sum(model.aux_losses().values())).backward()
    torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-9, atol=1e-9)
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-7, atol=1e-9, msg=name)
