"""A stdlib-sqlite3 writer in its own process, driven over stdin/stdout with JSON lines.

Why a process: APSW bundles its own SQLite, and two SQLite libraries in one process do not
see each other's POSIX locks (sqlite.org/howtocorrupt.html §2.2.1). In one process, the
tracker closing its connection deletes the WAL under a live stdlib connection ("disk I/O
error"), and concurrent writes are not serialised. A separate process is also what a second
writer really is.

Protocol, one JSON object per line each way:
    {"statements": [[sql, args], ...], "transaction": bool}
 -> {"rows": [[...], ...], "lastrowids": [int | null, ...]}  (rows of the last statement,
                                                          one rowid per statement)
 or {"error": "..."}

Only the standard library is imported, so the script runs without the project on the path.
Usage: sqlite_worker.py DB_PATH [--readonly]
"""

from __future__ import annotations

import json
import sqlite3
import sys
from typing import Any


def _run(conn: sqlite3.Connection, request: dict[str, Any]) -> dict[str, Any]:
    statements = request["statements"]
    transaction = bool(request.get("transaction"))
    rows: list[list[Any]] = []
    lastrowids: list[int | None] = []
    if transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, args in statements:
            cursor = conn.execute(sql, args)
            rows = [list(row) for row in cursor.fetchall()]
            lastrowids.append(cursor.lastrowid)
        if transaction:
            conn.execute("COMMIT")
    except sqlite3.Error:
        if transaction and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return {"rows": rows, "lastrowids": lastrowids}


def main() -> None:
    path = sys.argv[1]
    if "--readonly" in sys.argv[2:]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    else:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            answer = _run(conn, json.loads(line))
        except sqlite3.Error as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    conn.close()


if __name__ == "__main__":
    main()
