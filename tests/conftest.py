"""Test-wide settings: hypothesis profiles and the Rust thread count reset around each test."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import resnetbk

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_configure(config):
    """Under pytest-xdist (``scripts/dev test`` runs one worker per core) each worker's torch gets
    its share of the cores: two workers with a full-size thread pool each would oversubscribe 2
    cores, and torch's threads spin while they wait."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(workers)))


@pytest.fixture(autouse=True)
def _default_threads():
    """Each test starts with the Rust thread count following torch."""
    resnetbk.set_num_threads(None)
    yield
    resnetbk.set_num_threads(None)
