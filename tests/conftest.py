"""Test-wide settings: hypothesis profiles and the Rust thread count reset around each test."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import resnetbk

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None, max_examples=60)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _default_threads():
    """Each test starts with the Rust thread count following torch."""
    resnetbk.set_num_threads(None)
    yield
    resnetbk.set_num_threads(None)
