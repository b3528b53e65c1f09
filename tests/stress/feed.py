"""Mostro's side of the stress run: disputes opened at a steady pace on every relay.

Mostro publishes each dispute event to all its relays; `MostroSim` does the same (every relay
it is connected to) and says which ones accepted. While relays are down a publish can find
none: Mostro would try again, and so does the feed, until a relay takes the event. A steady
pace, rather than one burst, keeps the daemon under load for the whole outage plan.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Final

import msgspec

from tests.support.mostro_sim import MostroSim
from tests.support.sdk_thread import PublishError

RETRY_PAUSE: Final = 0.25


class FeedStats(msgspec.Struct, frozen=True):
    """`published` disputes (accepted by a relay), `retries` (publishes no relay took),
    `failures` (disputes given up at the deadline), first publish start and last success
    (monotonic), and the last error seen."""

    published: int
    retries: int
    failures: int
    first_at: float | None
    last_at: float | None
    last_error: str | None


class DisputeFeed:
    """Opens `dispute_ids[i]` at `t0 + i / rate` from `publishers` threads (so one slow
    publish does not hold up the pace), retrying each until accepted or `deadline`."""

    def __init__(
        self,
        mostro: MostroSim,
        dispute_ids: Sequence[str],
        *,
        rate: float,
        publishers: int,
        deadline: float,
    ) -> None:
        self._mostro = mostro
        self._ids = list(dispute_ids)
        self._rate = rate
        self._deadline = deadline
        self._lock = threading.Lock()
        self._next = 0
        self._published = 0
        self._retries = 0
        self._failures = 0
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._last_error: str | None = None
        self._accepted_at: dict[str, float] = {}
        self._cancel = threading.Event()
        self._t0 = 0.0
        self._threads = [
            threading.Thread(target=self._work, name=f"feed-{n}", daemon=True)
            for n in range(publishers)
        ]

    def start(self, t0: float) -> None:
        self._t0 = t0
        for thread in self._threads:
            thread.start()

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._cancel.set()
        for thread in self._threads:
            thread.join()

    def stats(self) -> FeedStats:
        with self._lock:
            return FeedStats(
                published=self._published,
                retries=self._retries,
                failures=self._failures,
                first_at=self._first_at,
                last_at=self._last_at,
                last_error=self._last_error,
            )

    def accepted_at(self) -> dict[str, float]:
        """Per dispute, when the publish that a relay accepted started (monotonic)."""
        with self._lock:
            return dict(self._accepted_at)

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self._ids):
                return None
            index = self._next
            self._next += 1
            return index

    def _work(self) -> None:
        while (index := self._take()) is not None:
            due = self._t0 + index / self._rate
            if self._cancel.wait(max(0.0, due - time.monotonic())):
                return
            self._publish(self._ids[index])

    def _publish(self, dispute_id: str) -> None:
        started = time.monotonic()
        with self._lock:
            if self._first_at is None:
                self._first_at = started
        while True:
            attempt_at = time.monotonic()
            try:
                self._mostro.open_dispute(dispute_id)
            except (PublishError, TimeoutError, RuntimeError) as exc:
                with self._lock:
                    self._retries += 1
                    self._last_error = str(exc)
                if self._cancel.wait(RETRY_PAUSE) or time.monotonic() > self._deadline:
                    with self._lock:
                        self._failures += 1
                    return
                continue
            with self._lock:
                self._published += 1
                self._last_at = time.monotonic()
                self._accepted_at[dispute_id] = attempt_at
            return
