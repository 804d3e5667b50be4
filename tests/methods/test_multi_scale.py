"""Multi-scale: the middle blocks run at half length, causally, on odd lengths too."""

import pytest
import torch

from helpers_methods import component_flops, tiny, tokens, traced_forward
from resnetbk.measure.causality import probe_causality


def test_middle_blocks_run_the_bk_core_at_half_length_and_half_the_flops():
    model, base = tiny(multi_scale=True), tiny()
    x = tokens(n=20)
    shortened, dense = traced_forward(model, x), traced_forward(base, x)
    for i in (1, 2):  # 4 layers: blocks 1 and 2 are the middle
        ratio = component_flops(dense, f"blocks.{i}.") / component_flops(shortened, f"blocks.{i}.")
        assert ratio == pytest.approx(2.0, rel=0.05), i
    for i in (0, 3):
        ratio = component_flops(dense, f"blocks.{i}.") / component_flops(shortened, f"blocks.{i}.")
        assert ratio == pytest.approx(1.0, rel=0.05), i


@pytest.mark.parametrize("n", (1, 2, 7, 19))
def test_odd_and_tiny_lengths_stay_causal(n):
    model = tiny(multi_scale=True, n_seq=max(n, 2))
    out = model(tokens(n=n))
    assert out.shape == (3, n, 50)
    assert probe_causality(model, 50, max(n, 2)).causal


def test_a_coarse_position_reads_only_completed_fine_positions():
    """Changing fine position t changes no output before t (the shift before pooling)."""
    model = tiny(multi_scale=True).eval()
    x = tokens(n=20)
    with torch.no_grad():
        base = model(x)
        for t in (1, 2, 9, 10):
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % 50
            torch.testing.assert_close(model(y)[:, :t], base[:, :t], rtol=0, atol=1e-6)
            assert not torch.allclose(model(y)[:, t], base[:, t])
