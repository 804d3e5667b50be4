"""Fixtures of the benchmark tests: a tiny WikiText-shaped corpus."""

import random
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small word-level corpus in the WikiText layout (blank lines included)."""
    folder = tmp_path_factory.mktemp("tinywiki")
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)] + ["<unk>", "the", "of", "="]
    for split, lines in (("train", 300), ("valid", 40), ("test", 40)):
        text = []
        for _ in range(lines):
            n = rng.choice([0, 3, 5, 8, 12])
            text.append(" " + " ".join(rng.choice(words) for _ in range(n)) + (" \n" if n else "\n"))
        (folder / f"wiki.{split}.tokens").write_text("".join(text))
    return folder
