"""Opening the database for an operator view, and knowing which tables it has.

A missing file is an error before SQLite sees it: `open_readonly` would report a bare
"unable to open database file", and an operator deserves the path and the ways to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import apsw
import msgspec

from serbero.store.connection import open_readonly
from serbero.store.errors import StoreFailure
from serbero.store.migrations import read_schema_version

__all__ = ["OpsError", "ReadOnlyDatabase", "open_for_reading"]


class OpsError(ValueError):
    """An operator view cannot be produced (missing or foreign database); the message says why."""


class ReadOnlyDatabase(msgspec.Struct, frozen=True):
    """A read-only connection and what the file holds: its schema version and table names."""

    conn: apsw.Connection
    path: str
    schema_version: int
    tables: frozenset[str]

    def has(self, table: str) -> bool:
        return table in self.tables


def _tables(conn: apsw.Connection) -> frozenset[str]:
    return frozenset(
        str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    )


@contextmanager
def open_for_reading(path: str) -> Iterator[ReadOnlyDatabase]:
    """Yield the database at `path` opened read-only; raise OpsError when it is not usable."""
    if not os.path.exists(path):
        raise OpsError(
            f"database not found: {path} (set [serbero].db_path, SERBERO_DB_PATH or --db)"
        )
    try:
        conn = open_readonly(path)
    except StoreFailure as exc:
        raise OpsError(str(exc)) from exc
    try:
        tables = _tables(conn)
        if "disputes" not in tables:
            raise OpsError(f"not a serbero database (no disputes table): {path}")
        try:
            version = read_schema_version(conn) if "schema_version" in tables else 0
        except StoreFailure as exc:
            raise OpsError(str(exc)) from exc
        yield ReadOnlyDatabase(conn=conn, path=path, schema_version=version, tables=tables)
    finally:
        conn.close()
