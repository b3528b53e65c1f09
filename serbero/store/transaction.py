"""The one helper every multi-statement store step runs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import apsw


@contextmanager
def transaction(conn: apsw.Connection) -> Iterator[None]:
    """One atomic step: `BEGIN IMMEDIATE ... COMMIT`, or a savepoint when already inside one.

    IMMEDIATE takes the write lock up front, so a read-then-write step can never fail
    half-way with a stale snapshot when another process writes the same file. Nested use
    (a step that calls another step, or the tracker batching several requests into one
    commit) becomes a savepoint, so each step still rolls back on its own.
    """
    if conn.in_transaction:
        with conn:
            yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
