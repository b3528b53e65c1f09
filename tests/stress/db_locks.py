"""Database-lock faults for the stress run: another process holds the daemon's write lock.

An operator's `sqlite3` running `BEGIN EXCLUSIVE`, or a backup tool, keeps the daemon from
committing anything for as long as it holds the lock. The daemon must hold its decisions
back and commit them, in order, once the lock is released, losing none (BEY-25). The plan
takes the lock a few times during the load, each time for longer than SQLite's 5 s busy
timeout (so the daemon sees the database unavailable, not just slow) and with a quiet spell
between two locks, so each is one outage in the daemon's log.
"""

from __future__ import annotations

import random
import time
from typing import Final

import msgspec

from tests.stress.schedule import PlanRunner
from tests.support.sqlite_process import SqliteProcess

LOCKS: Final = 2
LOCK_SECONDS: Final = (8.0, 15.0)
MIN_QUIET_SECONDS: Final = 10.0


class DbLock(msgspec.Struct, frozen=True):
    """The write lock is taken `at` seconds into the run and held for `seconds`."""

    at: float
    seconds: float


class DbLockRecord(msgspec.Struct, frozen=True):
    """When the lock was really held, in unix seconds (taking it can wait for a commit)."""

    lock: DbLock
    held_wall: float
    released_wall: float


def plan_db_locks(rng: random.Random, window: tuple[float, float]) -> list[DbLock]:
    """`LOCKS` locks at random times within `window` (seconds from the start), separated by
    at least `MIN_QUIET_SECONDS`; ValueError when the window cannot hold them."""
    seconds = [rng.uniform(*LOCK_SECONDS) for _ in range(LOCKS)]
    start, end = window
    slack = end - start - sum(seconds) - MIN_QUIET_SECONDS * LOCKS
    if slack < 0:
        raise ValueError(f"a window of {end - start:.0f} s cannot hold {LOCKS} database locks")
    cuts = sorted(rng.uniform(0, slack) for _ in range(LOCKS))
    locks, at = [], start
    for cut, length in zip(cuts, seconds, strict=True):
        locks.append(DbLock(at=at + cut, seconds=length))
        at += length + MIN_QUIET_SECONDS
    return locks


class DbLockRunner(PlanRunner[DbLock, DbLockRecord]):
    """Carries out a lock plan on a thread, from a process of its own (APSW and the stdlib
    SQLite in one process would not see each other's locks). `stop()` ends it early and
    releases a held lock."""

    def __init__(self, db_path: str, plan: list[DbLock]) -> None:
        super().__init__(plan, "db-locks")
        self._db_path = db_path

    def carry_out(self, lock: DbLock) -> DbLockRecord:
        with SqliteProcess(self._db_path) as holder:
            holder.execute("BEGIN EXCLUSIVE")
            held_at, held_wall = time.monotonic(), time.time()
            self.cancelled.wait(max(0.0, held_at + lock.seconds - time.monotonic()))
            holder.execute("ROLLBACK")
            return DbLockRecord(lock=lock, held_wall=held_wall, released_wall=time.time())
