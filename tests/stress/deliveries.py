"""What the solvers received: the inbox worker process and a tally of its reports.

The tally keeps, per solver and dispute, every distinct gift wrap that arrived (a wrap the
two relays both delivered is one wrap: the inbox opens each id once). Two wraps for the
same (solver, dispute) are a duplicate: the daemon published that DM as two different
events, which the solver's client shows twice.
"""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Final

import msgspec

from tests.stress.inbox_worker import READY

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
READY_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 20.0


class InboxWorker:
    """`tests.stress.inbox_worker` as a child process; `stdout` carries its reports."""

    def __init__(self, relay_urls: Sequence[str], secrets: Sequence[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.stress.inbox_worker", ",".join(relay_urls), *secrets],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def _wait_ready(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout, selectors.EVENT_READ)
            if not selector.select(READY_TIMEOUT):
                raise RuntimeError(f"inbox worker not ready within {READY_TIMEOUT:.0f} s")
        line = self.stdout.readline().strip()
        if line != READY:
            raise RuntimeError(f"inbox worker did not start (said {line!r})")

    def stop(self) -> None:
        """Close its stdin (it closes the inboxes and exits); kill it if it lingers."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Duplicate(msgspec.Struct, frozen=True):
    solver: int
    dispute_id: str
    wraps: int


class Deliveries:
    """Reads the worker's reports on a thread and tallies them against the expected
    disputes; `complete` is set once every solver holds every dispute."""

    def __init__(self, solvers: int, dispute_ids: Iterable[str], sender_hex: str) -> None:
        self._expected = frozenset(dispute_ids)
        self._sender = sender_hex
        self._lock = threading.Lock()
        self._wraps: list[dict[str, list[str]]] = [{} for _ in range(solvers)]
        self._first_arrival: list[dict[str, float]] = [{} for _ in range(solvers)]
        self._pairs = 0
        self._last_first_arrival: float | None = None
        self._foreign: list[str] = []
        self._errors: list[str] = []
        self.complete = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pairs_expected(self) -> int:
        return len(self._expected) * len(self._wraps)

    def follow(self, stream: IO[str]) -> None:
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            try:
                report = json.loads(line)
            except ValueError:
                self._note_error(f"unreadable report {line!r}")
                continue
            if report[0] == "dm":
                _, solver, dispute_id, wrap_id, sender, at = report
                self._note_dm(solver, dispute_id, wrap_id, sender, at)
            else:
                self._note_error(f"solver {report[1]}: {report[2]}")

    def _note_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _note_dm(self, solver: int, dispute_id: str, wrap_id: str, sender: str, at: float) -> None:
        with self._lock:
            if dispute_id not in self._expected or sender != self._sender:
                self._foreign.append(f"solver {solver}: dispute {dispute_id} from {sender[:12]}")
                return
            wraps = self._wraps[solver].setdefault(dispute_id, [])
            if wrap_id in wraps:
                return
            wraps.append(wrap_id)
            if len(wraps) == 1:
                self._first_arrival[solver][dispute_id] = at
                self._pairs += 1
                self._last_first_arrival = at
                if self._pairs == self.pairs_expected:
                    self.complete.set()

    # --- figures ---------------------------------------------------------------------------

    def pairs(self) -> int:
        """(solver, dispute) pairs that arrived at least once."""
        with self._lock:
            return self._pairs

    def last_first_arrival(self) -> float | None:
        """Monotonic time of the latest pair's first DM."""
        with self._lock:
            return self._last_first_arrival

    def arrivals(self) -> list[float]:
        """Every pair's first arrival, sorted (monotonic)."""
        with self._lock:
            return sorted(at for solver in self._first_arrival for at in solver.values())

    def complete_at(self) -> dict[str, float]:
        """Per dispute that every solver holds: when the last of them got its first DM."""
        with self._lock:
            held = [solver.keys() for solver in self._first_arrival]
            everywhere = set.intersection(*(set(keys) for keys in held)) if held else set()
            return {d: max(solver[d] for solver in self._first_arrival) for d in everywhere}

    def missing(self) -> list[list[str]]:
        """Per solver, the disputes it never heard of."""
        with self._lock:
            return [sorted(self._expected - held.keys()) for held in self._wraps]

    def duplicates(self) -> list[Duplicate]:
        with self._lock:
            return [
                Duplicate(solver=solver, dispute_id=dispute_id, wraps=len(wraps))
                for solver, held in enumerate(self._wraps)
                for dispute_id, wraps in held.items()
                if len(wraps) > 1
            ]

    def wraps_received(self) -> list[int]:
        """Distinct wraps opened, per solver."""
        with self._lock:
            return [sum(len(wraps) for wraps in held.values()) for held in self._wraps]

    def foreign(self) -> list[str]:
        with self._lock:
            return list(self._foreign)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def wait_complete(self, deadline: float) -> bool:
        return self.complete.wait(max(0.0, deadline - time.monotonic()))
