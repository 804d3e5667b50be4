"""WikiText-2 loading, vocabulary, contiguous streams and windows."""

import os
from pathlib import Path

import pytest
import torch

from resnetbk import data as wt2

#: The real WikiText-2: $RESNETBK_DATA (scripts/dev sets it), else the shared copy beside the checkout
#: (<checkout>/../shared/data/wikitext-2).
SHARED = Path(os.environ.get(wt2.DATA_ENV) or Path(__file__).resolve().parents[3] / "shared" / "data" / "wikitext-2")


def write_corpus(folder: Path, lines: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in lines.items():
        (folder / f"wiki.{split}.tokens").write_text(text)
    return folder


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared WikiText-2 copy is not here")
def test_real_wikitext2_counts_and_vocabulary():
    corpus = wt2.load_corpus(str(SHARED))
    assert corpus.counts() == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    assert corpus.vocab_size == 33_278
    assert corpus.is_wikitext2 and "WikiText-2" in corpus.describe()
    # The first line of train is blank (" \n") and the second a heading.
    assert corpus.vocab[corpus.train[0]] == "<eos>"
    assert [corpus.vocab[i] for i in corpus.train[1:5]] == ["=", "Valkyria", "Chronicles", "III"]


def test_tokenization_blank_lines_and_custom_dataset(tmp_path):
    folder = write_corpus(tmp_path / "d", {"train": " a b \n \n c a \n", "valid": " a \n", "test": " \n b c \n"})
    corpus = wt2.load_corpus(str(folder))
    assert [corpus.vocab[i] for i in corpus.train] == ["a", "b", "<eos>", "<eos>", "c", "a", "<eos>"]
    assert corpus.counts() == {"train": 7, "valid": 2, "test": 4}
    assert not corpus.is_wikitext2 and "custom dataset" in corpus.describe()


def test_environment_variable_is_a_source(tmp_path, monkeypatch):
    folder = write_corpus(tmp_path / "env", {"train": " x y \n", "valid": " x \n", "test": " y \n"})
    monkeypatch.setenv(wt2.DATA_ENV, str(folder))
    assert wt2.load_corpus().source == str(folder)


def test_missing_files_and_unknown_words(tmp_path):
    folder = write_corpus(tmp_path / "partial", {"train": " a \n"})
    with pytest.raises(wt2.DataError, match=r"--data-dir=.*missing: wiki.valid.tokens, wiki.test.tokens"):
        wt2.load_corpus(str(folder))
    folder = write_corpus(tmp_path / "oov", {"train": " a \n", "valid": " zzz \n", "test": " a \n"})
    with pytest.raises(wt2.DataError, match=r"valid: 1 word\(s\) not in the train vocabulary"):
        wt2.load_corpus(str(folder))


def test_offline_hub_gives_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv(wt2.DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(wt2.DataError, match=r"--data-dir DIR or RESNETBK_DATA=DIR"):
        wt2.load_corpus()


@pytest.mark.parametrize("batch", (1, 3, 4, 7))
def test_targets_are_the_next_token_of_the_same_stream(batch):
    tokens = torch.arange(103) * 10  # distinct, so each next token is identifiable
    inputs, targets = wt2.streams(tokens, batch)
    assert inputs.shape == targets.shape and inputs.shape[0] == batch
    real = targets != wt2.IGNORE_INDEX
    assert int(real.sum()) == 102  # every (token, next token) pair, once
    assert torch.equal(targets[real], inputs[real] + 10)
    # Streams are contiguous: within a row, the next input is this target.
    assert torch.equal(inputs[:, 1:][real[:, 1:]], targets[:, :-1][real[:, 1:]])
    # Padding only at the very end of the last stream.
    assert real.flatten().int().diff().clamp_max(0).sum() >= -1


def test_windows_cover_everything_including_the_last_partial_window():
    inputs, targets = wt2.streams(torch.arange(50), 2)
    pieces = list(wt2.windows(inputs, targets, 10))
    assert len(pieces) == wt2.num_windows(inputs, 10) == 3
    assert [p[0].shape[1] for p in pieces] == [10, 10, 5]
    assert torch.equal(torch.cat([p[1] for p in pieces], dim=1), targets)
    order = torch.tensor([2, 0, 1])
    assert [p[0].shape[1] for p in wt2.windows(inputs, targets, 10, order)] == [5, 10, 10]


def test_limit_tokens():
    t = torch.arange(1000)
    assert wt2.limit_tokens(t, max_tokens=100).numel() == 100
    assert wt2.limit_tokens(t, fraction=0.25).numel() == 250
    assert wt2.limit_tokens(t, max_tokens=100, fraction=0.05).numel() == 50
    with pytest.raises(ValueError, match="data_fraction"):
        wt2.limit_tokens(t, fraction=1.5)
