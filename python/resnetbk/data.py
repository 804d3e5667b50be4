"""WikiText-2 (word level) through ``datasets``: tokens, vocabulary, contiguous streams, windows.

Sources, in order: an explicit ``data_dir`` holding ``wiki.{train,valid,test}.tokens``, the
``RESNETBK_DATA`` environment variable (the same layout), then the Hugging Face hub
(``Salesforce/wikitext``, ``wikitext-2-v1``) with ``datasets``' normal cache. Every source goes
through ``datasets`` and yields the same token stream: each line becomes
``line.split() + ["<eos>"]``; the vocabulary comes from train only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

EOS = "<eos>"
SPLITS = ("train", "valid", "test")
#: The published WikiText-2 (v1) statistics: tokens per split and vocabulary size with <eos>.
WIKITEXT2_TOKENS = {"train": 2_088_628, "valid": 217_646, "test": 245_569}
WIKITEXT2_VOCAB = 33_278
HUB_NAME, HUB_CONFIG = "Salesforce/wikitext", "wikitext-2-v1"
_HUB_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
DATA_ENV = "RESNETBK_DATA"


class DataError(RuntimeError):
    """The data could not be found or read; the message says what to do."""


@dataclass
class Corpus:
    """Token ids of each split, the vocabulary, and where they came from."""

    vocab: list
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def counts(self) -> dict:
        return {s: int(getattr(self, s).numel()) for s in SPLITS}

    @property
    def is_wikitext2(self) -> bool:
        """True when the token and vocabulary counts are WikiText-2's published ones."""
        return self.counts() == WIKITEXT2_TOKENS and self.vocab_size == WIKITEXT2_VOCAB

    def describe(self) -> str:
        c = self.counts()
        kind = "WikiText-2 (counts match the published ones)" if self.is_wikitext2 else "a custom dataset (counts differ from WikiText-2)"
        return (
            f"{kind} from {self.source}: train {c['train']:,} / valid {c['valid']:,} / test {c['test']:,} tokens, "
            f"vocabulary {self.vocab_size:,}"
        )


def tokenize(lines) -> list:
    """``line.split() + ['<eos>']`` for every line, blank ones included."""
    tokens = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


def _local_dir(data_dir: Optional[str]) -> Optional[Path]:
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not chosen:
        return None
    path = Path(chosen)
    missing = [s for s in SPLITS if not (path / f"wiki.{s}.tokens").is_file()]
    if missing:
        origin = "--data-dir" if data_dir is not None else f"${DATA_ENV}"
        raise DataError(
            f"{origin}={chosen}: expected wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens there; "
            f"missing: {', '.join(f'wiki.{s}.tokens' for s in missing)}"
        )
    return path


def _load_lines(data_dir: Optional[str]) -> tuple[dict, str]:
    import datasets

    local = _local_dir(data_dir)
    if local is not None:
        files = {s: str(local / f"wiki.{s}.tokens") for s in SPLITS}
        ds = datasets.load_dataset("text", data_files=files)
        return {s: ds[s]["text"] for s in SPLITS}, str(local)
    try:
        ds = datasets.load_dataset(HUB_NAME, HUB_CONFIG)
    except Exception as exc:  # offline, hub unreachable, no cache: one clear message
        raise DataError(
            f"WikiText-2 is not available: no --data-dir, ${DATA_ENV} unset, and loading {HUB_NAME} "
            f"({HUB_CONFIG}) from the Hugging Face hub failed ({type(exc).__name__}: {exc}). Point at a local copy "
            f"of wiki.train.tokens / wiki.valid.tokens / wiki.test.tokens with --data-dir DIR or {DATA_ENV}=DIR."
        ) from exc
    return {s: ds[_HUB_SPLITS[s]]["text"] for s in SPLITS}, f"{HUB_NAME} ({HUB_CONFIG})"


def load_corpus(data_dir: Optional[str] = None) -> Corpus:
    """Load, tokenize and index the three splits (vocabulary from train, in first-seen order)."""
    lines, source = _load_lines(data_dir)
    tokens = {s: tokenize(lines[s]) for s in SPLITS}
    index: dict = {}
    for word in tokens["train"]:
        if word not in index:
            index[word] = len(index)
    ids = {}
    for split in SPLITS:
        unknown = {w for w in tokens[split] if w not in index}
        if unknown:
            sample = ", ".join(sorted(unknown)[:5])
            raise DataError(f"{split}: {len(unknown)} word(s) not in the train vocabulary (e.g. {sample}); "
                            "word-level WikiText maps rare words to <unk> in every split")
        ids[split] = torch.tensor([index[w] for w in tokens[split]], dtype=torch.long)
    return Corpus(vocab=list(index), source=source, **ids)


def limit_tokens(stream: torch.Tensor, max_tokens: Optional[int] = None, fraction: Optional[float] = None) -> torch.Tensor:
    """The first part of a token stream: at most ``max_tokens``, and/or a ``fraction`` of it."""
    n = stream.numel()
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"data_fraction: expected a number in (0, 1], got {fraction}")
        n = max(2, int(n * fraction))
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_train_tokens: expected at least 2, got {max_tokens}")
        n = min(n, max_tokens)
    return stream[:n]


IGNORE_INDEX = -100


def streams(tokens: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a token stream into ``batch_size`` contiguous streams of (input, next-token target).

    Returns ``inputs, targets`` of shape ``(batch_size, L)`` with ``targets[b, t]`` the token that
    follows ``inputs[b, t]`` in the text. All ``len(tokens) - 1`` pairs are kept: the last stream
    is padded at its end (input 0, target ``IGNORE_INDEX``), which a causal model never reads.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
    pairs = tokens.numel() - 1
    if pairs < 1:
        raise ValueError("tokens: need at least 2 tokens to form one (input, target) pair")
    length = -(-pairs // batch_size)
    pad = length * batch_size - pairs
    inputs = torch.cat([tokens[:-1], tokens.new_zeros(pad)])
    targets = torch.cat([tokens[1:], tokens.new_full((pad,), IGNORE_INDEX)])
    return inputs.view(batch_size, length), targets.view(batch_size, length)


def windows(inputs: torch.Tensor, targets: torch.Tensor, n_seq: int, order: Optional[torch.Tensor] = None) -> Iterator:
    """``(inputs, targets)`` windows of ``n_seq`` positions, the last one partial; in ``order`` if given."""
    starts = list(range(0, inputs.shape[1], n_seq))
    for i in order.tolist() if order is not None else range(len(starts)):
        s = starts[i]
        yield inputs[:, s : s + n_seq], targets[:, s : s + n_seq]


def num_windows(inputs: torch.Tensor, n_seq: int) -> int:
    return -(-inputs.shape[1] // n_seq)
