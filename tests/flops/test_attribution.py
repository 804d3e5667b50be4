"""The tracer's attribution of ops to modules: deterministic (no set order, no string hashes),
independent of what was traced before, exception-safe, and right where a module returns its
input unchanged (``nn.Dropout(0)``); ``priced_as`` from ``resnetbk.attribution``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from resnetbk.attribution import THE_MODULE, current_override, priced_as
from resnetbk.flops import OUTSIDE_MODULES, FlopsTracer
from resnetbk.models import ModelOptions, build_model

#: One traced training step (forward, backward, AdamW update) of small ResNet-BK and Transformer
#: models, dropout 0 and > 0; prints the reports' ``by_component`` as JSON.
STEPS = textwrap.dedent("""
    import json, sys
    import torch
    from resnetbk.flops import FlopsTracer
    from resnetbk.models import ModelOptions, build_model

    torch.set_num_threads(1)
    figures = {}
    for architecture in ("resnet_bk", "transformer"):
        for dropout in (0.0, 0.1):
            torch.manual_seed(0)
            model = build_model(ModelOptions(architecture, 61, d_model=16, n_layers=2, n_seq=12, dropout=dropout,
                                             tie_embeddings=dropout == 0.0))
            optimizer = torch.optim.AdamW(model.parameters())
            x, y = torch.randint(61, (2, 12)), torch.randint(61, (2, 12))
            tracer = FlopsTracer()
            with tracer:
                nll, _ = model(x, y)
                (nll + sum(model.aux_losses().values(), torch.zeros(()))).backward()
            tracer.optimizer_step(optimizer)
            figures[f"{architecture} dropout={dropout}"] = tracer.report()["by_component"]
    json.dump(figures, sys.stdout, sort_keys=True)
""")


def test_the_figures_do_not_depend_on_string_hashes():
    """Under PYTHONHASHSEED=3 the old tracer (ModuleTracker's set of module names) gave a
    dropout-0 module its neighbours' backward ops; every seed must give the same figures."""
    runs = {}
    for seed in (0, 3, 7):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"}
        runs[seed] = subprocess.Popen([sys.executable, "-c", STEPS], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    figures = {}
    for seed, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        figures[seed] = json.loads(out)
    assert figures[0] == figures[3] == figures[7]
    for name, by_component in figures[0].items():
        assert by_component["blocks.0.norm" if "resnet" in name else "blocks.0.norm1"]["backward"] > 0, name
        if name.endswith("dropout=0.0"):  # the embeddings' dropout returns its input: no backward of its own
            assert "backward" not in by_component.get("dropout", {}), name
        else:
            assert by_component["dropout"]["backward"] > 0, name


def _step(seed: int, architecture: str, tracer: FlopsTracer) -> None:
    torch.manual_seed(seed)
    model = build_model(ModelOptions(architecture, 53, d_model=8, n_layers=2, n_seq=10, dropout=0.0))
    x = torch.randint(53, (2, 10), generator=torch.Generator().manual_seed(seed))
    with tracer:
        nll, _ = model(x, x)
        (nll + sum(model.aux_losses().values(), torch.zeros(()))).backward()


def test_the_order_of_traces_does_not_matter():
    def by_component(order, shared):
        tracer = FlopsTracer() if shared else None
        reports = {}
        for architecture in order:
            mine = tracer or FlopsTracer()
            _step(1, architecture, mine)
            reports[architecture] = mine.report()["by_component"]
        return tracer.report()["by_component"] if shared else reports

    forward_order = by_component(("resnet_bk", "transformer"), shared=False)
    assert forward_order == by_component(("transformer", "resnet_bk"), shared=False)
    # One tracer for both (records accumulate across enters, the attribution starts afresh).
    assert by_component(("resnet_bk", "transformer"), shared=True) == by_component(("transformer", "resnet_bk"),
                                                                                   shared=True)


class _Net(nn.Module):
    """``a -> (x2) -> drop -> b``: the dropout returns the product itself when p = 0."""

    def __init__(self, p: float):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(8, 8), nn.Dropout(p), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(self.drop(self.a(x) * 2.0))


#: Views and detaches (priced at 0), left out of the comparisons.
BOOKKEEPING = ("aten.t", "aten.view", "aten.detach", "aten.expand")


def _backward_records(tracer: FlopsTracer) -> dict:
    """Backward op counts by component and op name (bookkeeping left out)."""
    records = {}
    for (name, *_, phase, component), count in tracer.records.items():
        if phase == "backward" and name not in BOOKKEEPING:
            records.setdefault(component, {}).setdefault(name, 0)
            records[component][name] += count
    return records


def test_a_dropout_of_zero_gets_none_of_its_neighbours_backward():
    torch.manual_seed(0)
    net = _Net(0.0)
    x = torch.randn(5, 8, requires_grad=True)
    tracer = FlopsTracer()
    with tracer:
        net(x).square().sum().backward()
    backward = _backward_records(tracer)
    assert "drop" not in backward
    # b: the gradients of its input and weight (mm) and of its bias (sum); a: the same; the
    # product by 2 (in Net's own forward) is the top level's; the loss is outside modules.
    assert backward["b"] == backward["a"] == {"aten.mm": 2, "aten.sum": 1}
    assert backward["model (top level)"] == {"aten.mul": 1}
    assert set(backward) == {"a", "b", "model (top level)", OUTSIDE_MODULES}
    # Dropout > 0 has a backward of its own (the mask), and the rest is booked as before.
    torch.manual_seed(0)
    with FlopsTracer() as active:
        _Net(0.5)(x.detach().requires_grad_()).square().sum().backward()
    with_mask = _backward_records(active)
    assert with_mask["drop"] and {c: with_mask[c] for c in backward} == backward


def test_accumulated_gradients_are_booked_to_the_parameters_module():
    torch.manual_seed(0)
    net = _Net(0.0)
    x = torch.randn(5, 8)
    net(x).sum().backward()  # untraced: the gradients exist, the traced backward adds to them
    with FlopsTracer() as tracer:
        net(x).sum().backward()
    adds = {c: ops["aten.add_"] for c, ops in _backward_records(tracer).items() if "aten.add_" in ops}
    assert adds == {"a": 2, "b": 2}  # weight and bias each


class _Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("inside a module")


class _Catches(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.proj = _Raises(), nn.Linear(4, 4)

    def forward(self, x):
        try:
            self.inner(x)
        except RuntimeError:
            pass
        return x * 3.0  # the parent's own op, after its child failed


def _hooks() -> tuple:
    return tuple(module_hooks._global_forward_pre_hooks), tuple(module_hooks._global_forward_hooks)


def test_an_exception_inside_leaves_no_hooks_and_no_mode():
    before = _hooks()
    tracer = FlopsTracer()
    with pytest.raises(RuntimeError, match="inside a module"):
        with tracer:
            assert _hooks() != before and tracer in _get_current_dispatch_mode_stack()
            _Raises()(torch.ones(3))
    assert _hooks() == before and tracer not in _get_current_dispatch_mode_stack()
    # A module that raised is off the stack: a caught exception does not move later ops into it.
    with tracer:
        _Catches()(torch.ones(4))
    forward = {key[-1] for key in tracer.records if key[0] == "aten.mul"}
    assert forward == {"model (top level)"}
    assert _hooks() == before and tracer not in _get_current_dispatch_mode_stack()


def test_an_exception_in_priced_as_restores_the_outer_override():
    assert current_override() == (None, None)
    with priced_as(component="loss"):
        with pytest.raises(ValueError):
            with priced_as(phase="backward", component=THE_MODULE):
                assert current_override() == ("backward", None)
                raise ValueError
        assert current_override() == (None, "loss")
    assert current_override() == (None, None)


def test_priced_as_moves_ops_in_the_trace():
    linear, x = nn.Linear(4, 4), torch.ones(2, 4)
    with FlopsTracer() as tracer:
        with priced_as(component="loss"):
            linear(x)  # a module inside: the override wins
            with priced_as(phase="backward", component=THE_MODULE):
                linear(x)  # the module again, as backward work
    booked = {(key[-2], key[-1]) for key in tracer.records}
    assert booked == {("forward", "loss"), ("backward", "model (top level)")}


def test_profiler_range_markers_are_not_priced():
    """``record_function`` ranges (the step's phases, named for torch.profiler) are no work."""
    from torch.profiler import record_function

    tracer = FlopsTracer()
    a = torch.randn(8, 8)
    with tracer, record_function("step.forward"):
        a @ a
    report = tracer.report()
    assert report["unknown"] == {} and list(report["by_op"]) == ["aten.mm"]
