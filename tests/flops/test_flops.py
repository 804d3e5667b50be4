"""The FLOPs engine and the execution tracer: cross-checks against FlopCounterMode and by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from helpers import make_config
from resnetbk import _native
from resnetbk.flops import FlopsTracer
from resnetbk.models import ModelOptions, build_model

MATMUL_FAMILY = ("matmul", "attention", "bk_core")  # what FlopCounterMode counts (BK via its formula)


def _matmul_family(report):
    return sum(report["by_category"].get(c, 0) for c in MATMUL_FAMILY)


def _loss(model, tokens):
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten()) + 0.01 * sum(model.aux_losses().values(), torch.zeros(()))
    return loss


@pytest.mark.parametrize("arch", ("transformer", "resnet_bk"))
def test_matmul_family_equals_flop_counter_forward_and_backward(arch):
    tokens = torch.randint(120, (3, 11), generator=torch.Generator().manual_seed(0))
    counted = {}
    for counter in ("engine", "torch"):
        torch.manual_seed(0)
        model = build_model(ModelOptions(arch, 120, 16, 2, 12))
        if counter == "engine":
            forward, backward = FlopsTracer(), FlopsTracer()
        else:
            forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
        with forward:
            loss = _loss(model, tokens)
        with backward:
            loss.backward()
        if counter == "engine":
            counted[counter] = (_matmul_family(forward.report()), _matmul_family(backward.report()))
        else:
            counted[counter] = (forward.get_total_flops(), backward.get_total_flops())
    assert counted["engine"] == counted["torch"]
    assert min(counted["engine"]) > 0


def test_one_layer_transformer_forward_by_hand():
    b, n, d, v, heads = 2, 7, 16, 50, 4
    torch.manual_seed(0)
    model = build_model(ModelOptions("transformer", v, d, 1, n, n_heads=heads)).eval()
    tracer = FlopsTracer()
    with tracer, torch.no_grad():
        model(torch.randint(v, (b, n)))
    report = tracer.report()
    t = b * n  # tokens
    layer_norm = 8 * t * d
    by_hand = (
        t * d  # token + position embedding add
        + layer_norm + (2 * t * d * 3 * d + t * 3 * d)  # LN1, qkv (matmul + bias)
        + 4 * b * n * n * d  # attention scores and weighted values (full score matrix)
        + (2 * t * d * d + t * d) + t * d  # output projection, residual add
        + layer_norm + (2 * t * d * 4 * d + t * 4 * d) + 5 * t * 4 * d + (2 * t * 4 * d * d + t * d) + t * d  # MLP
        + layer_norm + 2 * t * d * v  # final LayerNorm, LM head
    )
    assert report["unknown"] == {}
    assert report["total"] == by_hand, report["by_op"]


def test_optimizer_flops_are_parameters_times_the_stated_cost():
    torch.manual_seed(0)
    model = build_model(ModelOptions("resnet_bk", 60, 16, 1, 8))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}])
    _loss(model, torch.randint(60, (2, 8))).backward()
    tracer = FlopsTracer()
    tracer.optimizer_step(optimizer)
    report = tracer.report()
    expected = (sum(p.numel() for p in decay) * _native.optimizer_flops_per_parameter("adamw", True)
                + sum(p.numel() for p in no_decay) * _native.optimizer_flops_per_parameter("adamw", False))
    assert report["by_phase"]["optimizer"] == expected > 0
    assert report["by_phase"]["forward"] == report["by_phase"]["backward"] == 0
    assert _native.optimizer_flops_per_parameter("adamw", True) == 14


def test_unknown_ops_are_listed_by_name_and_count():
    tracer = FlopsTracer()
    with tracer:
        x = torch.randn(4, 8)
        torch.cumsum(x, dim=1)
        torch.cumsum(x, dim=0)
        x @ x.t()
    report = tracer.report()
    assert report["unknown"] == {"aten.cumsum": 2}
    assert report["by_op"]["aten.mm"] == 2 * 4 * 8 * 4


def test_moe_counts_the_tokens_actually_routed():
    torch.manual_seed(0)
    model = build_model(ModelOptions("resnet_bk", 40, 8, 1, 6, dropout=0.0)).eval()
    router = model.blocks[0].moe.router
    with torch.no_grad():
        router.weight.zero_()
        router.bias.copy_(torch.tensor([10.0, 0.0, 0.0, 0.0]))  # every token goes to expert 0
    tracer = FlopsTracer()
    with tracer, torch.no_grad():
        model(torch.randint(40, (2, 6)))
    components = tracer.report()["by_component"]
    expert_flops = {e: sum(v for c, p in components.items() if c.startswith(f"blocks.0.moe.experts.{e}.")
                           for v in p.values()) for e in range(4)}
    d, tokens = 8, 12
    assert expert_flops[1] == expert_flops[2] == expert_flops[3] == 0
    # Linear d->2d (matmul + bias), ReLU, Linear 2d->d (matmul + bias), for the 12 routed tokens.
    assert expert_flops[0] == tokens * (2 * d * 2 * d + 2 * d) + tokens * 2 * d + tokens * (2 * 2 * d * d + d)


@pytest.mark.parametrize("arch", ("transformer", "resnet_bk", "resnet_bk_no_mixer"))
# Batches of at least 64 tokens: the estimate assumes every expert gets tokens (an expert that
# gets none has no gradient, and the executed AdamW step then skips its parameters).
@pytest.mark.parametrize("b,n,d,layers,vocab", [(4, 16, 16, 1, 50), (4, 32, 32, 2, 300), (3, 64, 64, 3, 1000)])
def test_closed_form_estimate_agrees_with_the_trace(arch, b, n, d, layers, vocab):
    from resnetbk.bench.config import model_options, step_shape
    from resnetbk.flops.estimate import estimate_step
    from resnetbk.train.optim import make_optimizer

    torch.manual_seed(0)
    resnet_only = {"use_analytic_gradient": arch == "resnet_bk", "no_mixer": arch == "resnet_bk_no_mixer"}
    config = make_config(architecture=arch.replace("_no_mixer", ""), d_model=d, n_layers=layers, n_seq=n, batch_size=b,
                         **resnet_only)
    model = build_model(model_options(config, vocab))
    optimizer = make_optimizer(model, config)
    tracer = FlopsTracer()
    tokens = torch.randint(vocab, (b, n), generator=torch.Generator().manual_seed(1))
    with tracer:
        _loss(model, tokens).backward()
    tracer.optimizer_step(optimizer)
    measured = tracer.report()
    estimated = estimate_step(step_shape(config, vocab))
    assert estimated["unknown"] == {} and measured["unknown"] == {}
    for phase in ("forward", "backward", "optimizer"):
        assert estimated["by_phase"][phase] == pytest.approx(measured["by_phase"][phase], rel=0.02), phase
    if arch.startswith("resnet_bk"):  # the MoE's own ops (routing, grouping, scaling), component by component
        for phase in ("forward", "backward"):
            want = measured["by_component"]["blocks.0.moe"][phase]
            assert estimated["by_component"]["blocks.0.moe"][phase] == pytest.approx(want, rel=0.02), phase
    # The optimizer phase, independently of parameter_groups (which both sides use): AdamW's 14
    # FLOPs per decayed element (weight matrices, not the embeddings) and its cost without decay
    # for the rest (norms, biases, embeddings, bk_scale).
    embeddings = {id(model.token_embedding.weight), id(model.position_embedding.weight)}
    params = {id(p): p for p in model.parameters()}.values()
    decayed = sum(p.numel() for p in params if p.dim() >= 2 and id(p) not in embeddings)
    plain = sum(p.numel() for p in params) - decayed
    by_hand = (decayed * _native.optimizer_flops_per_parameter("adamw", True)
               + plain * _native.optimizer_flops_per_parameter("adamw", False))
    assert measured["by_phase"]["optimizer"] == estimated["by_phase"]["optimizer"] == by_hand


def test_sequence_length_sweep(tmp_path, capsys):
    from resnetbk.bench.cli import main

    assert main(["flops", "--seq-lens", "64,256,1024", "--batch", "2", "--vocab-size", "500",
                 "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "transformer: training FLOPs per token" in out and "resnet_bk:" in out
    import json

    table = json.loads((tmp_path / "flops_sweep.json").read_text())["per_token_flops"]
    bk = [table["resnet_bk"][str(n)]["mixer"] for n in (64, 256, 1024)]
    attention = [table["transformer"][str(n)]["mixer"] for n in (64, 256, 1024)]
    assert bk[0] == pytest.approx(bk[2], rel=0.01)  # O(N) in total: flat per token
    # O(N^2) in total: per token, the attention's growth is linear in N (N: 64 -> 256 -> 1024).
    assert (attention[2] - attention[1]) / (attention[1] - attention[0]) == pytest.approx(4.0, rel=0.05)
    assert (tmp_path / "flops_sweep.png").stat().st_size > 10_000


def test_autograd_through_the_torch_scan_is_fully_priced():
    """grad="autograd" through the parallel scan runs eye/sgn/abs ops; all are in the price list."""
    from resnetbk import bk_core

    diag = torch.randn(4, 128, requires_grad=True)
    tracer = FlopsTracer()
    with tracer:
        bk_core(diag - 2.0, torch.ones(127), backend="torch_scan", grad="autograd").real.sum().backward()
    report = tracer.report()
    assert report["unknown"] == {}
    assert report["by_phase"]["backward"] > report["by_phase"]["forward"] > 0
