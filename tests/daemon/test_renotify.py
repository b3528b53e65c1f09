"""The re-notification timer (CORE-51..55, BEY-6) on Trio's autojump clock, with a wall
clock that follows it; the tracker keeps SQLite on the Trio thread (`offload=False`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import apsw
import trio
import trio.testing
from structlog.testing import capture_logs

from serbero.actors.renotify import Renotifier, RenotifyStats, timer_period
from serbero.actors.tracker import Tracker, open_tracker
from serbero.actors.tracker_requests import (
    ClaimOutbox,
    CompleteOutboxes,
    RecordAssignment,
    RecordDetected,
)
from serbero.config import SolverConfig, TimeoutsConfig
from serbero.protocol.keys import Keys
from serbero.store.disputes import DisputeEvent
from serbero.store.outbox import OutboxMessage, OutboxOutcome
from tests.daemon.support import count_rows, query
from tests.support.clocks import START as T0
from tests.support.clocks import TrioWallClock

PERIOD = 60
RENOTIFY_AFTER = 300
SOLVER = SolverConfig.from_text(Keys.generate().public_hex)


class Rings:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def dispute_event(status: str = "initiated") -> DisputeEvent:
    return DisputeEvent(
        dispute_id="d-timer",
        event_id=f"ev-{status}",
        mostro_pubkey="ab" * 32,
        event_timestamp=T0 - 100,
        status=status,
        initiator_role="buyer",
    )


@asynccontextmanager
async def tracker_at(tmp_path: Path) -> AsyncIterator[Tracker]:
    async with open_tracker(
        str(tmp_path / "serbero.db"), wall_clock=TrioWallClock(), offload=False
    ) as tracker:
        yield tracker


async def deliver_everything(tracker: Tracker) -> None:
    """Stand in for the sender: every due row is accepted by a relay."""
    claim = await tracker.ask(ClaimOutbox(limit=100))
    await tracker.ask(CompleteOutboxes(tuple(OutboxOutcome(row.id, ok=True) for row in claim.rows)))


async def notified_dispute(tracker: Tracker) -> None:
    messages = (OutboxMessage(SOLVER.pubkey, "initial"),)
    await tracker.ask(RecordDetected(event=dispute_event(), messages=messages))
    await deliver_everything(tracker)


def timer(tracker: Tracker, rings: Rings, **timeouts: int) -> Renotifier:
    settings = {
        "renotification_seconds": RENOTIFY_AFTER,
        "renotification_check_interval_seconds": PERIOD,
        **timeouts,
    }
    return Renotifier(
        tracker,
        [SOLVER],
        TimeoutsConfig(**settings),
        ring_sender=rings,
        wall_clock=TrioWallClock(),
        stats=RenotifyStats(),
    )


def renotifications(db: str, state: str | None = None) -> int:
    where = "notif_type = 're-notification'" + ("" if state is None else f" AND state = '{state}'")
    return count_rows(db, "notification_outbox", where)


async def test_due_disputes_are_renotified_on_schedule_and_never_stacked(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    db = str(tmp_path / "serbero.db")
    rings = Rings()
    async with tracker_at(tmp_path) as tracker:
        await notified_dispute(tracker)
        assert query(db, "SELECT last_notified_at FROM disputes") == [(T0,)]
        renotifier = timer(tracker, rings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(renotifier.run)
            await trio.sleep_until(PERIOD - 0.5)
            assert renotifier.stats.cycles == 0, "the first cycle comes P after start"
            await trio.sleep_until(RENOTIFY_AFTER + 0.5)
            assert renotifier.stats.cycles == 5
            assert renotifications(db) == 0, "at exactly T + 300 it is not yet due"
            await trio.sleep_until(RENOTIFY_AFTER + PERIOD + 0.5)
            assert renotifications(db, "pending") == 1 and rings.count == 1
            (body,) = query(db, "SELECT body FROM notification_outbox WHERE id = 2")[0]
            assert body.split("\n")[1:] == [
                "dispute_id: d-timer",
                "lifecycle_state: notified",
                f"time_elapsed_seconds: {RENOTIFY_AFTER + PERIOD + 100}",
            ]
            await trio.sleep_until(RENOTIFY_AFTER + 3 * PERIOD + 0.5)
            assert renotifications(db) == 1, "an owed reminder is not stacked"

            await trio.sleep_until(500)
            await deliver_everything(tracker)
            assert query(db, "SELECT last_notified_at FROM disputes") == [(T0 + 500,)]
            await trio.sleep_until(780.5)
            assert renotifications(db) == 1, "due only once now > T' + 300"
            await trio.sleep_until(840.5)
            assert renotifications(db, "pending") == 1 and renotifications(db) == 2

            await tracker.ask(
                RecordAssignment(event=dispute_event("in-progress"), assigned_solver=None)
            )
            await trio.sleep_until(2000)
            assert renotifications(db) == 2, "a taken dispute is never re-notified"
            assert renotifications(db, "abandoned") == 1
            nursery.cancel_scope.cancel()
    assert query(db, "SELECT to_state FROM dispute_state_transitions ORDER BY id") == [
        ("notified",),
        ("taken",),
    ], "re-notifying writes no transition row"


async def test_cycles_are_skipped_while_the_database_is_unavailable(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """BEY-25: a cycle during an outage asks nothing (its requests would only queue behind
    the held-back decisions); the first cycle after it records the reminders still due."""
    db = str(tmp_path / "serbero.db")
    rings = Rings()
    async with tracker_at(tmp_path) as tracker:
        await notified_dispute(tracker)
        renotifier = timer(tracker, rings)
        await trio.sleep_until(RENOTIFY_AFTER + PERIOD)
        tracker.outage.failed(apsw.BusyError("database is locked"), now=T0, waiting=0)
        with capture_logs() as logs:
            assert await renotifier.cycle() == 0
        assert [e["event"] for e in logs] == ["renotification_cycle_skipped"]
        assert renotifications(db) == 0
        tracker.outage.cleared(now=T0 + 1)
        assert await renotifier.cycle() == 1
        assert renotifications(db, "pending") == 1 and rings.count == 1


async def test_an_overrunning_cycle_skips_missed_periods(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """CORE-51: cycles never overlap and missed periods are not replayed in a burst."""
    starts: list[float] = []
    ends: list[float] = []

    class Slow(Renotifier):
        async def cycle(self) -> int:
            starts.append(trio.current_time())
            if len(starts) == 1:
                await trio.sleep(250)
            ends.append(trio.current_time())
            return 0

    async with tracker_at(tmp_path) as tracker:
        slow = Slow(
            tracker,
            [SOLVER],
            TimeoutsConfig(renotification_check_interval_seconds=PERIOD),
            ring_sender=Rings(),
            wall_clock=TrioWallClock(),
            stats=RenotifyStats(),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow.run)
            await trio.sleep_until(7 * PERIOD + 1)
            nursery.cancel_scope.cancel()
    assert starts == [60, 360, 420]
    assert all(start >= end for start, end in zip(starts[1:], ends, strict=False))


def test_the_period_is_at_least_one_second() -> None:
    assert timer_period(TimeoutsConfig(renotification_check_interval_seconds=0)) == 1
    assert timer_period(TimeoutsConfig(renotification_check_interval_seconds=7)) == 7


async def test_without_solvers_every_due_dispute_is_reported_all_failed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    db = str(tmp_path / "serbero.db")
    async with tracker_at(tmp_path) as tracker:
        await notified_dispute(tracker)
        await trio.sleep(RENOTIFY_AFTER + 1)
        lonely = Renotifier(
            tracker,
            [],
            TimeoutsConfig(renotification_seconds=RENOTIFY_AFTER),
            ring_sender=Rings(),
            wall_clock=TrioWallClock(),
            stats=RenotifyStats(),
        )
        with capture_logs() as logs:
            assert await lonely.cycle() == 0
    assert [e["event"] for e in logs] == ["renotification_tick", "renotification_all_failed"]
    assert renotifications(db) == 0


async def test_a_reminder_no_solver_can_receive_is_reported_all_failed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """CORE-54/55: the reminder is still recorded (its rows fail at send), and flagged."""
    bad = SolverConfig.from_text("not-a-key")
    async with tracker_at(tmp_path) as tracker:
        await notified_dispute(tracker)
        await trio.sleep(RENOTIFY_AFTER + 1)
        renotifier = Renotifier(
            tracker,
            [bad],
            TimeoutsConfig(renotification_seconds=RENOTIFY_AFTER),
            ring_sender=Rings(),
            wall_clock=TrioWallClock(),
            stats=RenotifyStats(),
        )
        with capture_logs() as logs:
            assert await renotifier.cycle() == 1
        assert "renotification_all_failed" in [e["event"] for e in logs]
