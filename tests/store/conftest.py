"""Fixtures for the store tests: a fresh, fully migrated database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from serbero.store.connection import open_database


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


@pytest.fixture
def conn(db_path: str) -> Iterator[apsw.Connection]:
    connection, _ = open_database(db_path)
    try:
        yield connection
    finally:
        connection.close()
