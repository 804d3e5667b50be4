"""The MQAR generator: labels only at the queries, every queried key present earlier with its
value, no answer visible before its query except in its pair, the power law, determinism and
bad cells as named errors."""

import numpy as np
import pytest
import torch

from resnetbk.recall.mqar import IGNORE_INDEX, MQARCell, generate
from resnetbk.recall.training import distance_bucket

CELLS = [MQARCell(64, 4, 256), MQARCell(30, 7, 40), MQARCell(128, 16, 8192), MQARCell(8, 2, 8)]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: f"{c.name}-v{c.vocab_size}")
def test_every_query_reads_a_key_whose_value_came_once_before(cell):
    data = generate(cell, 300, seed=3)
    inputs, labels = data.inputs.numpy(), data.labels.numpy()
    half, context = cell.vocab_size // 2, 2 * cell.num_pairs
    assert inputs.shape == labels.shape == (300, cell.seq_len) and inputs.min() >= 0 and inputs.max() < cell.vocab_size
    for row_in, row_lab in zip(inputs, labels):
        keys, values = row_in[0:context:2], row_in[1:context:2]
        assert ((keys >= 1) & (keys < half)).all() and ((values >= half) & (values < cell.vocab_size)).all()
        assert len(set(keys)) == len(set(values)) == cell.num_pairs
        queries = np.flatnonzero(row_lab != IGNORE_INDEX)
        assert len(queries) == cell.num_pairs  # labels only at the queries, one per pair
        assert (queries >= context).all() and ((queries - context) % 2 == 0).all()
        for t in queries:
            key = row_in[t]
            i = int(np.flatnonzero(keys == key)[0])  # the queried key is one of the pairs' keys
            assert row_lab[t] == values[i]  # and its label is that pair's value
            # The key occurs twice (pair, query); its value once, in the pair, before the query.
            assert (row_in == key).sum() == 2
            assert np.flatnonzero(row_in[: t + 1] == values[i]).tolist() == [2 * i + 1]
        assert set(row_in[queries]) == set(keys)  # every key queried exactly once


def test_the_distances_follow_the_labels_in_reading_order():
    cell = MQARCell(64, 4, 256)
    data = generate(cell, 50, seed=0)
    expected = []
    for row_in, row_lab in zip(data.inputs.numpy(), data.labels.numpy()):
        keys = list(row_in[0:8:2])
        for t in np.flatnonzero(row_lab != IGNORE_INDEX):
            expected.append(t - 2 * keys.index(row_in[t]))
    assert data.distances.tolist() == expected
    assert min(expected) >= 2 and max(expected) < 64


def test_same_seed_same_data_other_seed_other_data():
    cell = MQARCell(64, 8, 512)
    a, b, c = generate(cell, 40, seed=5), generate(cell, 40, seed=5), generate(cell, 40, seed=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_the_gaps_follow_zoologys_power_law():
    """With power_a 0.01 a pair is queried soon far more often than late; power_a 1 is uniform."""
    near = generate(MQARCell(128, 4, 256, power_a=0.01), 2000, seed=1)
    flat = generate(MQARCell(128, 4, 256, power_a=1.0), 2000, seed=1)

    def offsets(data):
        pos = (data.labels != IGNORE_INDEX).nonzero()[:, 1]
        return ((pos - 8) // 2).double()

    assert offsets(near).mean() < 0.6 * offsets(flat).mean()
    # Uniform gaps over 60 slots, 4 drawn without replacement: the mean offset is 29.5.
    assert abs(offsets(flat).mean().item() - 29.5) < 1.0


def test_the_filler_is_uniform_over_the_allowed_tokens():
    cell = MQARCell(256, 2, 16)
    data = generate(cell, 400, seed=2)
    counts = np.bincount(data.inputs.numpy()[:, 4:].ravel(), minlength=16)  # mostly filler
    share = counts / counts.sum()
    assert share.min() > 0.03 and share.max() < 0.1  # every token, none far above 1/16


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=63, num_pairs=4, vocab_size=256), "seq_len: expected an even length"),
    (dict(seq_len=64, num_pairs=17, vocab_size=256), "num_pairs: 17 pairs need seq_len >= 68"),
    (dict(seq_len=64, num_pairs=8, vocab_size=16), "num_pairs: 8 distinct keys need vocab_size >= 18"),
    (dict(seq_len=64, num_pairs=4, vocab_size=256, power_a=0.0), "power_a: expected a positive number"),
    (dict(seq_len=2, num_pairs=1, vocab_size=256), "seq_len: expected an integer >= 4"),
])
def test_bad_cells_are_named_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MQARCell(**kwargs)


def test_bad_example_counts_are_named_errors():
    with pytest.raises(ValueError, match="examples: expected a positive integer"):
        generate(MQARCell(16, 2, 32), 0, seed=0)


@pytest.mark.parametrize("distance, bucket", [(1, 1), (2, 2), (3, 2), (4, 4), (7, 4), (8, 8), (100, 64)])
def test_distance_buckets(distance, bucket):
    assert distance_bucket(distance) == bucket
