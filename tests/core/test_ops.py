"""The custom ops: torch.library.opcheck, the FLOP formulas under FlopCounterMode, threads."""

import pytest
import torch
from torch.library import opcheck
from torch.utils.flop_counter import FlopCounterMode

import resnetbk
from helpers import make_problem
from resnetbk.core.flops import BACKWARD_PER_ELEMENT, FORWARD_PER_ELEMENT


# opcheck's own AOT test reads .grad of a non-leaf internally, which warns inside torch.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("backend", ("rust", "torch", "torch_sweep", "torch_scan"))
@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
@pytest.mark.parametrize("symmetric", (True, False))
def test_opcheck(backend, mode, symmetric):
    p = make_problem(batch=(2,), n=6, symmetric=symmetric)
    args = (*p.leaves(), mode, backend)
    opcheck(torch.ops.resnetbk.bk_core.default, args)
    grad = torch.randn(2, 6, dtype=torch.complex128)
    opcheck(torch.ops.resnetbk.bk_core_backward.default, (grad, *p.inputs(), mode, backend))


@pytest.mark.parametrize("mode", ("causal", "bidirectional"))
def test_flop_counter_counts_forward_and_backward(mode):
    diag = torch.randn(4, 33, requires_grad=True)
    upper = torch.ones(4, 32)
    with FlopCounterMode(display=False) as counter:
        out = resnetbk.bk_core(diag, upper, mode=mode)
    assert counter.get_total_flops() == FORWARD_PER_ELEMENT[mode] * 4 * 33
    with FlopCounterMode(display=False) as counter:
        out.real.sum().backward()
    assert counter.get_total_flops() == BACKWARD_PER_ELEMENT[mode] * 4 * 33


def test_compiles_with_the_fake_implementation():
    p = make_problem(batch=(2,), n=10)
    fn = torch.compile(lambda d, u, lo, z: resnetbk.bk_core(d, u, lo, z, mode="bidirectional"), backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(fn(*p.inputs()), resnetbk.bk_core(*p.inputs(), mode="bidirectional"), rtol=0, atol=0)


def test_thread_count_follows_torch_and_override_gives_same_numbers():
    p = make_problem(batch=(64,), n=300)
    assert resnetbk.get_num_threads() == torch.get_num_threads()
    resnetbk.set_num_threads(1)
    assert resnetbk.get_num_threads() == 1
    one = resnetbk.bk_core(*p.inputs(), mode="bidirectional")
    resnetbk.set_num_threads(3)
    three = resnetbk.bk_core(*p.inputs(), mode="bidirectional")
    assert torch.equal(one, three)
    resnetbk.set_num_threads(None)
    assert resnetbk.get_num_threads() == torch.get_num_threads()
