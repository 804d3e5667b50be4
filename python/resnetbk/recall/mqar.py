"""Multi-query associative recall (MQAR), the task of Zoology (Arora et al. 2023, "Zoology:
Measuring and Improving Recall in Efficient Language Models"), generated from a seed.

One example of ``seq_len`` tokens with ``num_pairs`` pairs::

    k1 v1 k2 v2 ... kP vP | x  x  k2 x  x  x  k1 x ...
    -- the pairs (2P) --- | -- the rest: queries at even offsets, filler between --
    labels: ignored everywhere except at a query, where the label is that key's value

Keys come from ``1 .. vocab/2 - 1``, values from ``vocab/2 .. vocab - 1``, distinct within an
example. Each key is queried once, after the pairs, at offset ``2 * gap`` where the gaps are
drawn without replacement with probability proportional to ``(gap + 1) ** (power_a - 1)``
(Zoology's power law: a pair is more likely queried soon, ``power_a`` 1 is uniform). A causal
model predicts the value at the query's own position (the label sits where the key is read).

As in Zoology, every other position holds a random token. One change, so that an example has one
answer: the filler never draws one of the example's own keys or values, so a key occurs exactly
twice (in its pair and at its query) and a value once, in its pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..validate import check_int, check_number

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MQARCell:
    """One grid point of the task: sequence length, pairs, vocabulary and the gap law."""

    seq_len: int
    num_pairs: int
    vocab_size: int
    power_a: float = 0.01

    def __post_init__(self) -> None:
        check_int(self, "seq_len", low=4)
        check_int(self, "num_pairs", low=1)
        check_int(self, "vocab_size", low=4)
        check_number(self, "power_a", low=0.0, low_open=True)
        if self.seq_len % 2:
            raise ValueError(f"seq_len: expected an even length (queries sit at even offsets), got {self.seq_len}")
        if 4 * self.num_pairs > self.seq_len:
            raise ValueError(f"num_pairs: {self.num_pairs} pairs need seq_len >= {4 * self.num_pairs} (the pairs, then "
                             f"a query slot per pair), got seq_len {self.seq_len}; use fewer pairs or longer sequences")
        keys = self.vocab_size // 2 - 1
        if self.num_pairs > keys:
            raise ValueError(f"num_pairs: {self.num_pairs} distinct keys need vocab_size >= {2 * (self.num_pairs + 1)}, "
                             f"got vocab_size {self.vocab_size}")
        if self.vocab_size - 2 * self.num_pairs < 2:
            raise ValueError(f"vocab_size: {self.vocab_size} leaves no filler tokens beside {self.num_pairs} pairs")

    @property
    def name(self) -> str:
        return f"seq{self.seq_len}-pairs{self.num_pairs}"


@dataclass
class MQARData:
    """``inputs`` and ``labels`` ``(examples, seq_len)`` (labels ``IGNORE_INDEX`` except at the
    queries), and per query (in the order of ``labels != IGNORE_INDEX``, row-major) its distance
    from its key in the pairs."""

    cell: MQARCell
    inputs: torch.Tensor
    labels: torch.Tensor
    distances: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]


def _distinct(rng: np.random.Generator, rows: int, low: int, high: int, count: int) -> np.ndarray:
    """``count`` distinct integers from ``low .. high - 1`` per row (chunked: no rows x range matrix
    of floats at once)."""
    out = np.empty((rows, count), dtype=np.int64)
    chunk = max(1, 2**22 // max(1, high - low))
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        scores = rng.random((stop - start, high - low))
        out[start:stop] = np.argpartition(scores, count - 1, axis=1)[:, :count] + low
    return out


def _power_law_gaps(rng: np.random.Generator, rows: int, space: int, count: int, power_a: float) -> np.ndarray:
    """``count`` distinct gaps in ``0 .. space - 1`` per row, drawn one after another without
    replacement with weights ``(gap + 1) ** (power_a - 1)``: the Gumbel top-k trick, the same law as
    numpy's ``choice(replace=False, p=...)``."""
    log_weight = (power_a - 1.0) * np.log(np.arange(1, space + 1, dtype=np.float64))
    keys = log_weight + rng.gumbel(size=(rows, space))
    return np.argsort(-keys, axis=1)[:, :count]


def generate(cell: MQARCell, examples: int, seed: int) -> MQARData:
    """``examples`` MQAR sequences of ``cell``, the same for the same seed."""
    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 1:
        raise ValueError(f"examples: expected a positive integer, got {examples!r}")
    rng = np.random.default_rng(seed)
    n, pairs, vocab = cell.seq_len, cell.num_pairs, cell.vocab_size
    half = vocab // 2
    keys = _distinct(rng, examples, 1, half, pairs)
    values = _distinct(rng, examples, half, vocab, pairs)
    context = 2 * pairs
    gaps = _power_law_gaps(rng, examples, (n - context) // 2, pairs, cell.power_a)
    query_pos = context + 2 * gaps  # (examples, pairs): where key i is queried

    inputs = _filler(rng, examples, n, vocab, np.concatenate([keys, values], axis=1))
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    rows = np.arange(examples)[:, None]
    inputs[rows, query_pos] = keys
    labels = np.full((examples, n), IGNORE_INDEX, dtype=np.int64)
    labels[rows, query_pos] = values
    key_pos = 2 * np.arange(pairs)[None, :]
    # Per query in row-major order of the labels (position order within a row).
    order = np.argsort(query_pos, axis=1)
    distances = np.take_along_axis(query_pos - key_pos, order, axis=1).reshape(-1)
    return MQARData(cell, torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(distances))


def _filler(rng: np.random.Generator, rows: int, n: int, vocab: int, excluded: np.ndarray) -> np.ndarray:
    """Random tokens ``(rows, n)``, none of them one of its row's ``excluded`` tokens: a uniform
    draw from the ``vocab - k`` allowed ones (``k`` excluded per row, distinct), by mapping a draw
    from ``0 .. vocab - k - 1`` past the sorted excluded tokens."""
    excluded = np.sort(excluded, axis=1)
    k = excluded.shape[1]
    draw = rng.integers(0, vocab - k, size=(rows, n))
    # The j-th allowed token is j + (the number of excluded tokens <= it); with the excluded
    # sorted, step past them one at a time (k steps, each vectorised over the whole array).
    for j in range(k):
        draw += draw >= excluded[:, j:j + 1]
    return draw
