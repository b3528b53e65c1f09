"""A stdlib-sqlite3 connection in its own process, for tests that need a second SQLite user.

Why a process: APSW bundles its own SQLite, and two SQLite libraries in one process do not
see each other's POSIX locks (sqlite.org/howtocorrupt.html §2.2.1). A separate process is
also what an operator's `sqlite3` or a second writer really is. Calls block for one pipe
round trip; from Trio, call them through `trio.to_thread.run_sync`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

WORKER_SCRIPT: Final = Path(__file__).with_name("sqlite_worker.py")
WORKER_EXIT_TIMEOUT: Final = 5.0


class SqliteProcessError(RuntimeError):
    """A statement the worker's SQLite refused (constraint, trigger, lock, ...)."""


class SqliteProcess:
    """One stdlib-sqlite3 connection on `db_path`, living in a child process."""

    def __init__(self, db_path: str, *, readonly: bool = False) -> None:
        args = [sys.executable, str(WORKER_SCRIPT), db_path]
        if readonly:
            args.append("--readonly")
        self._process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._read() == {"ready": True}

    @property
    def pid(self) -> int:
        """The child's process id (what a lock probe names as the holder)."""
        return self._process.pid

    def __enter__(self) -> SqliteProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise SqliteProcessError(f"sqlite worker exited: {self._process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, transaction: bool = False
    ) -> dict[str, Any]:
        """Run statements (optionally in one transaction); rows of the last one come back."""
        assert self._process.stdin is not None
        request = {"statements": [[sql, list(args)] for sql, args in statements]}
        self._process.stdin.write(json.dumps({**request, "transaction": transaction}) + "\n")
        self._process.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise SqliteProcessError(answer["error"])
        return answer

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int | None:
        """Run one statement in autocommit mode; returns the last inserted rowid."""
        lastrowid: int | None = self.call([(sql, args)])["lastrowids"][-1]
        return lastrowid

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[list[Any]]:
        """Rows of one statement."""
        rows: list[list[Any]] = self.call([(sql, args)])["rows"]
        return rows

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            self._process.wait(WORKER_EXIT_TIMEOUT)
        if self._process.stdout is not None:
            self._process.stdout.close()
