"""The context-reach diagnostic: equal to a direct gradient computation, defined for every
model, and readable from results of older schema versions."""

import pytest
import torch

from resnetbk.measure.context_reach import context_reach, shown_distances
from resnetbk.models import ModelOptions, build_model
from resnetbk.models.head import IGNORE_INDEX
from resnetbk.train.results import BenchmarkResults


@pytest.mark.parametrize("arch", ["transformer", "resnet_bk", "lstm", "mamba"])
def test_context_reach_matches_a_direct_gradient(arch):
    torch.manual_seed(0)
    n = 12
    model = build_model(ModelOptions(arch, 40, 16, 2, n, dropout=0.0)).double()
    stream = torch.randint(40, (2 * n + 1,))
    reach = context_reach(model, stream, n, batch=2, sequences=2)
    # The same two sequences, their targets, the loss at the last position.
    inputs = torch.stack([stream[:n], stream[n : 2 * n]])
    targets = torch.stack([stream[1 : n + 1], stream[n + 1 : 2 * n + 1]])
    model.eval()
    x = model.token_embedding(inputs)
    if model.position_embedding is not None:
        x = x + model.position_embedding(torch.arange(n))
    x = x.detach().requires_grad_(True)
    only_last = torch.full_like(targets, IGNORE_INDEX)
    only_last[:, -1] = targets[:, -1]
    loss = model.lm_head(model.final_norm(model.blocks_forward(x)), only_last)
    (grad,) = torch.autograd.grad(loss, x)
    expected = grad.norm(dim=-1).flip(-1).mean(0)
    assert reach["sequences"] == 2 and reach["position"] == n - 1 and reach["distances"] == list(range(n))
    torch.testing.assert_close(torch.tensor(reach["gradient_norm"], dtype=torch.float64), expected.double(),
                               rtol=1e-4, atol=1e-9)
    assert reach["relative"][0] == 1.0 and all(v >= 0 for v in reach["relative"])


def test_training_mode_is_restored_and_short_splits_give_none():
    model = build_model(ModelOptions("resnet_bk", 30, 16, 1, 8)).train()
    assert context_reach(model, torch.randint(30, (40,)), 8)["sequences"] >= 1
    assert model.training
    assert context_reach(model, torch.randint(30, (5,)), 8) is None


def test_shown_distances_and_old_results_without_the_field():
    assert shown_distances(128) == [1, 2, 4, 8, 16, 32, 64, 127]
    assert shown_distances(16) == [1, 2, 4, 8, 15]
    doc = BenchmarkResults(model_name="m", config={}, training_time=1.0, test_perplexity=2.0).to_dict()
    del doc["context_reach"]  # a schema-4 file
    assert BenchmarkResults.from_dict(doc).context_reach is None
