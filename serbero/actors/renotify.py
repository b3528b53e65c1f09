"""The re-notification timer: reminds every solver of disputes nobody took (CORE-51..55).

Every `P = max(1, renotification_check_interval_seconds)` seconds (first cycle `P` after
start; a cycle that overruns skips the periods it missed, no burst replay; cycles never
overlap, being one loop) it takes `now` once, lists the `notified` disputes last notified
before `now - renotification_seconds`, and records the reminders each one owes. Recording
re-checks "still notified and due" inside its transaction (BEY-6), so a dispute taken
since the query is not nagged. The sender delivers; a delivered reminder moves
`last_notified_at` to the time of delivery (CORE-54 happens at completion, in the outbox).

Sleeping uses Trio's clock and what is stored uses the injected wall clock, so tests drive
both (autojump clock + fake wall clock).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import trio

from serbero.actors.tracker import Pending, Tracker
from serbero.actors.tracker_requests import EnqueueRenotification, ListUnattended
from serbero.clock import WallClock
from serbero.config import SolverConfig, TimeoutsConfig
from serbero.log import get_logger
from serbero.protocol.texts import TextError, renotification
from serbero.store.disputes import RenotificationResult, UnattendedDispute
from serbero.store.errors import StoreError
from serbero.store.outbox import OutboxMessage

__all__ = [
    "MIN_PERIOD_SECONDS",
    "Renotifier",
    "RenotifyStats",
    "timer_period",
]

log = get_logger("serbero.renotify")

MIN_PERIOD_SECONDS: Final = 1


def timer_period(timeouts: TimeoutsConfig) -> int:
    """CORE-51: P = max(1, renotification_check_interval_seconds)."""
    return max(MIN_PERIOD_SECONDS, timeouts.renotification_check_interval_seconds)


class RenotifyStats:
    """The timer's running figures; written by the timer only, read by the health snapshot."""

    __slots__ = ("cycles",)

    def __init__(self) -> None:
        self.cycles = 0


class Renotifier:
    """The timer actor; `run` cycles until cancelled, `cycle` is one pass (tests call it)."""

    def __init__(
        self,
        tracker: Tracker,
        solvers: Sequence[SolverConfig],
        timeouts: TimeoutsConfig,
        *,
        ring_sender: Callable[[], None],
        wall_clock: WallClock,
        stats: RenotifyStats,
    ) -> None:
        self._tracker = tracker
        self._recipients = tuple(solver.key for solver in solvers)
        self._any_valid = any(solver.pubkey_hex is not None for solver in solvers)
        self._renotification_seconds = timeouts.renotification_seconds
        self.period = timer_period(timeouts)
        self._ring = ring_sender
        self._wall_clock = wall_clock
        self.stats = stats

    async def run(self) -> None:
        deadline = trio.current_time() + self.period
        while True:
            await trio.sleep_until(deadline)
            await self.cycle()
            deadline += self.period
            now = trio.current_time()
            if deadline <= now:
                # Overran: skip the missed periods rather than replaying them in a burst.
                missed = int((now - deadline) // self.period) + 1
                deadline += missed * self.period

    async def cycle(self) -> int:
        """One CORE-52 cycle; returns how many disputes got reminders recorded. A failure is
        logged and left for the next cycle (CORE-6). While the database is unavailable the
        cycle is skipped: its requests would only wait behind the held-back decisions, and
        the next cycle after the outage finds every dispute still due (BEY-25)."""
        now = self._wall_clock()
        self.stats.cycles += 1
        if not self._tracker.outage.available:
            log.debug("renotification_cycle_skipped", reason="database unavailable")
            return 0
        try:
            return await self._cycle(now)
        except Exception as exc:
            log.warning("renotification_cycle_failed", error=str(exc), reason=type(exc).__name__)
        return 0

    async def _cycle(self, now: int) -> int:
        due = await self._tracker.ask(
            ListUnattended(now=now, renotification_seconds=self._renotification_seconds)
        )
        if due:
            log.info("renotification_tick", count=len(due))
        else:
            log.debug("renotification_tick", count=0)
            return 0
        if not self._recipients:
            for dispute in due:
                log.warning(
                    "renotification_all_failed",
                    dispute_id=dispute.dispute_id,
                    reason="no solvers configured",
                )
            return 0
        submitted: list[tuple[UnattendedDispute, Pending[RenotificationResult]]] = []
        for dispute in due:
            try:
                body = renotification(dispute.dispute_id, now, dispute.event_timestamp)
            except TextError as exc:
                log.warning(
                    "renotification_cycle_failed", dispute_id=dispute.dispute_id, error=str(exc)
                )
                continue
            request = EnqueueRenotification(
                dispute_id=dispute.dispute_id,
                cycle_now=now,
                renotification_seconds=self._renotification_seconds,
                messages=tuple(OutboxMessage(pubkey, body) for pubkey in self._recipients),
            )
            submitted.append((dispute, await self._tracker.submit(request)))
        enqueued = 0
        for dispute, pending in submitted:
            try:
                result = await pending.result()
            except StoreError as exc:
                log.warning(
                    "renotification_cycle_failed", dispute_id=dispute.dispute_id, error=str(exc)
                )
                continue
            if result.outcome != "enqueued":
                log.debug(
                    "renotification_skipped", dispute_id=dispute.dispute_id, reason=result.outcome
                )
                continue
            enqueued += 1
            log.debug(
                "renotification_enqueued",
                dispute_id=dispute.dispute_id,
                solvers=len(result.outbox_ids),
                held_back=result.held_back,
            )
            if not self._any_valid:
                # CORE-54: every recipient key is unparsable, so this reminder cannot reach
                # anyone; its `failed` rows are still written (CORE-55).
                log.warning(
                    "renotification_all_failed",
                    dispute_id=dispute.dispute_id,
                    reason="no solver has a valid public key",
                )
        if enqueued:
            self._ring()
        return enqueued
