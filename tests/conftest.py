"""Shared fixtures. Test vectors load from tests/vectors (see its README), never retyped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import settings

# Hypothesis's default 200 ms deadline per example judges the machine, not the code: on two
# cores shared with the rest of the suite a signing or encrypting example can exceed it.
settings.register_profile("serbero", deadline=None)
settings.load_profile("serbero")

# Real loopback relays (nostr-sdk LocalRelay in a subprocess) for every test folder.
pytest_plugins = ["tests.support.relay_fixtures"]

REPO_ROOT = Path(__file__).resolve().parent.parent


VECTORS_DIR = REPO_ROOT / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    if not VECTORS_DIR.is_dir():
        pytest.fail(f"test vectors not found at {VECTORS_DIR}")
    return VECTORS_DIR


@pytest.fixture
def serbero_free_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No SERBERO_* from the developer's shell, and an empty working directory: what the
    `serbero` command sees there is only what the test gives it."""
    for name in list(os.environ):
        if name.startswith("SERBERO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def restored_structlog() -> Iterator[None]:
    """For a test that configures logging itself: structlog's global configuration (its level
    filter above all, which would hide debug events from later tests' `capture_logs`) is put
    back afterwards."""
    yield
    structlog.reset_defaults()
