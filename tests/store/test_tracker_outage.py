"""The tracker through an unavailable database (BEY-25): work that fails on an error that can
clear is run again, in order, until it commits; nothing is answered as failed meanwhile,
one warning marks the start and one info line the end, and only a request's own permanent
error fails it."""

from __future__ import annotations

import apsw
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from serbero.actors.store_outage import RETRY_MAX_SECONDS, retry_delay, transient_cause
from serbero.actors.tracker import (
    Context,
    Request,
    StoreUnavailable,
    TrackerClosed,
    TransientFailure,
    open_tracker,
    run_batch,
)
from serbero.actors.tracker_requests import GetDispute, RecordDetected
from serbero.store.connection import open_database
from serbero.store.errors import StoreFailure
from serbero.store.transaction import transaction
from tests.store.helpers import T0, count, event, messages
from tests.support.clocks import FakeWallClock
from tests.support.sqlite_process import SqliteProcess


class _Flaky(Request[int], frozen=True):
    """Fails with `error` while `failures` has entries left (one per attempt), then writes
    its health fact and returns how many attempts it took."""

    key: str
    failures: list[apsw.Error]
    attempts: list[int]

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        self.attempts.append(ctx.now)
        with transaction(conn):
            conn.execute(
                "INSERT INTO serbero_daemon_health (key, value, updated_at) VALUES (?, 'x', ?)",
                (self.key, ctx.now),
            )
            if self.failures:
                raise self.failures.pop(0)
        return len(self.attempts)


def _flaky(key: str, *errors: apsw.Error) -> _Flaky:
    return _Flaky(key=key, failures=list(errors), attempts=[])


def _events(logs: list[dict[str, object]]) -> list[str]:
    return [
        str(entry["event"])
        for entry in logs
        if entry["event"] in ("database_unavailable", "database_available")
    ]


def test_errors_that_can_clear_are_told_apart() -> None:
    assert transient_cause(apsw.BusyError("database is locked")) is not None
    assert transient_cause(apsw.IOError("disk I/O error")) is not None
    assert transient_cause(apsw.FullError("database or disk is full")) is not None
    assert transient_cause(apsw.ConstraintError("UNIQUE constraint failed")) is None
    try:
        try:
            raise apsw.IOError("disk I/O error")
        except apsw.Error:
            raise apsw.SQLError("no such savepoint") from None
    except apsw.Error as exc:
        # The savepoint's rollback failed after SQLite rolled everything back: the I/O
        # error is what counts.
        assert isinstance(transient_cause(exc), apsw.IOError)
    assert [retry_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, 0.2]
    assert retry_delay(50) == RETRY_MAX_SECONDS


def test_a_batch_that_cannot_start_raises_without_running(
    conn: apsw.Connection, db_path: str
) -> None:
    conn.set_busy_timeout(50)
    with SqliteProcess(db_path) as other:
        other.execute("BEGIN EXCLUSIVE")
        ctx = Context(now=T0, rand=lambda n: bytes(n))
        for requests in ([RecordDetected(event("d-1"))], [RecordDetected(event("d-1"))] * 2):
            with pytest.raises(TransientFailure) as caught:
                run_batch(conn, requests, ctx)
            assert caught.value.done == []
            assert isinstance(caught.value.error, apsw.BusyError)
        other.execute("ROLLBACK")
    assert count(conn, "disputes") == 0


def test_a_transient_error_mid_batch_rolls_the_whole_batch_back(conn: apsw.Connection) -> None:
    ctx = Context(now=T0, rand=lambda n: bytes(n))
    with pytest.raises(TransientFailure) as caught:
        run_batch(
            conn,
            [RecordDetected(event("d-1")), _flaky("f", apsw.IOError("disk I/O error"))],
            ctx,
        )
    assert caught.value.done == []
    assert count(conn, "disputes") == 0
    assert count(conn, "serbero_daemon_health") == 0


async def test_work_is_retried_in_order_until_it_commits(
    db_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    clock = FakeWallClock(T0)
    busy = [apsw.BusyError("database is locked") for _ in range(30)]
    flaky = _flaky("first", *busy)
    with capture_logs() as logs:
        async with open_tracker(db_path, wall_clock=clock, offload=False) as tracker:
            first = await tracker.submit(flaky)
            later = [
                await tracker.submit(RecordDetected(event(f"d-{i}"), messages("initial")))
                for i in range(5)
            ]
            await trio.sleep(5)
            assert not tracker.outage.available
            assert tracker.outage.error == "database is locked"
            assert tracker.outage.unavailable_since == T0
            # A caller whose wait runs out is told why; its request stays queued.
            with pytest.raises(StoreUnavailable):
                await tracker.ask(GetDispute("d-0"), timeout=1)
            assert await first.result(timeout=60) == 31
            results = [await pending.result() for pending in later]
            assert all(result.inserted for result in results)
            assert tracker.outage.available
            assert await tracker.ask(GetDispute("d-0")) is not None
    assert _events(logs) == ["database_unavailable", "database_available"]
    unavailable = next(e for e in logs if e["event"] == "database_unavailable")
    assert unavailable["log_level"] == "warning"
    assert unavailable["requests_waiting"] >= 1
    cleared = next(e for e in logs if e["event"] == "database_available")
    assert cleared["log_level"] == "info" and cleared["attempts"] == 30
    assert not [e for e in logs if e["log_level"] in ("error", "warning") and e is not unavailable]
    conn, _ = open_database(db_path)
    assert count(conn, "disputes") == 5
    assert count(conn, "serbero_daemon_health", "key = 'first'") == 1
    conn.close()


async def test_a_permanent_error_fails_only_its_own_request(
    db_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0), offload=False) as tracker:
        await tracker.ask(RecordDetected(event("d-1")))
        flaky = await tracker.submit(_flaky("f", apsw.IOError("disk I/O error")))
        # The same event id again: the schema's UNIQUE constraint refuses it for good.
        clash = await tracker.submit(RecordDetected(event("d-2", event_id="ev-d-1-initiated")))
        fine = await tracker.submit(RecordDetected(event("d-3")))
        assert await flaky.result() == 2
        with pytest.raises(StoreFailure, match="UNIQUE"):
            await clash.result()
        assert (await fine.result()).inserted


async def test_shutting_down_during_an_outage_refuses_what_is_left(db_path: str) -> None:
    answers: list[str] = []
    with capture_logs():
        async with (
            trio.open_nursery() as nursery,
            open_tracker(db_path, wall_clock=FakeWallClock(T0), offload=False) as tracker,
        ):
            stuck = _flaky("stuck", *[apsw.BusyError("database is locked")] * 10_000)

            async def ask(request: Request[object]) -> None:
                try:
                    await tracker.ask(request, timeout=600)
                    answers.append("answered")
                except TrackerClosed:
                    answers.append("refused")

            nursery.start_soon(ask, stuck)
            for i in range(3):
                nursery.start_soon(ask, RecordDetected(event(f"d-{i}")))
            with trio.fail_after(5):
                while tracker.outage.available:
                    await trio.sleep(0.01)
        assert answers == ["refused"] * 4
