"""Fixtures for the operator-command tests: seeded databases and a clean environment."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.ops.seed import seed_reference, seed_v6


@pytest.fixture(autouse=True)
def clean_env(serbero_free_env: None) -> None:
    """Every operator-command test runs without the developer's SERBERO_* variables."""


@pytest.fixture
def v6_db(tmp_path: Path) -> Path:
    """A daemon database whose health record was flushed 1 s ago (`now` = 501 s ago)."""
    path = tmp_path / "serbero.db"
    seed_v6(path, now=int(time.time()) - 501)
    return path


@pytest.fixture
def stale_db(tmp_path: Path) -> Path:
    """A daemon database whose last heartbeat is years old."""
    path = tmp_path / "stale.db"
    seed_v6(path)
    return path


@pytest.fixture
def v5_db(tmp_path: Path) -> Path:
    path = tmp_path / "reference.db"
    seed_reference(path)
    return path
