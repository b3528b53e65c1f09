"""The tracker actor: answers every request, typed errors, group commit, readers, shutdown."""

from __future__ import annotations

import threading
import time
import uuid

import apsw
import pytest
import trio
import trio.testing

import serbero.actors.mediation.requests as round_requests_module
import serbero.actors.tracker as tracker_module
import serbero.actors.tracker_requests as requests_module
from serbero.actors.tracker import (
    Answer,
    Context,
    Request,
    TrackerClosed,
    TrackerTimeout,
    open_tracker,
    run_batch,
)
from serbero.actors.tracker_requests import (
    ClaimOutbox,
    CompleteOutboxes,
    ComputeSince,
    GetDispute,
    ListUnattended,
    RecordDetected,
    RecordDispatch,
    ScanPendingHandoffs,
    WriteHealth,
)
from serbero.store.connection import open_database
from serbero.store.disputes import Since
from serbero.store.errors import InvalidTransition, StoreFailure, UnknownDispute
from serbero.store.escalation import RecipientOutcome
from serbero.store.health import RelayHealth, read_health
from serbero.store.lifecycle import TransitionResult, apply_transition
from serbero.store.outbox import OutboxCompletion, OutboxOutcome
from serbero.store.schema import SCHEMA_VERSION
from tests.store.helpers import T0, count, event, messages
from tests.support.clocks import FakeWallClock
from tests.support.sqlite_process import SqliteProcess


class _Slow(Request[int], frozen=True):
    """Holds the worker for a while, then writes a health fact."""

    seconds: float

    def apply(self, conn: apsw.Connection, ctx: Context) -> int:
        time.sleep(self.seconds)
        conn.execute(
            "INSERT INTO serbero_daemon_health (key, value, updated_at) VALUES ('slow', 'done', ?)",
            (ctx.now,),
        )
        return ctx.now


class _Crash(Request[None], frozen=True):
    """A request with a bug."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> None:
        raise RuntimeError("bug in a store step")


class _RollbackEverything(Request[None], frozen=True):
    """Ends the surrounding transaction behind the tracker's back."""

    def apply(self, conn: apsw.Connection, ctx: Context) -> None:
        conn.execute("ROLLBACK")


class _Transition(Request[TransitionResult], frozen=True):
    """One lifecycle change: a step that fails with typed errors, depending on order."""

    dispute_id: str
    to_state: str
    trigger: str

    def apply(self, conn: apsw.Connection, ctx: Context) -> TransitionResult:
        return apply_transition(conn, self.dispute_id, self.to_state, self.trigger, ctx.now)


class _Unimplemented(Request[None], frozen=True):
    """Forgets to name its store step."""


async def test_requests_are_answered_with_results(db_path: str) -> None:
    clock = FakeWallClock(T0)
    async with open_tracker(db_path, wall_clock=clock) as tracker:
        assert tracker.schema.current == SCHEMA_VERSION
        assert await tracker.ask(ComputeSince()) == Since(since=T0, last_seen_event_ts=None)
        result = await tracker.ask(RecordDetected(event("d-1", ts=T0 - 5), messages("initial")))
        assert result.inserted
        clock.advance(7)
        again = await tracker.ask(RecordDetected(event("d-1"), messages("initial")))
        assert not again.inserted
        dispute = await tracker.ask(GetDispute("d-1"))
        assert dispute is not None
        assert (dispute.detected_at, dispute.lifecycle_state) == (T0, "new")
        claim = await tracker.ask(ClaimOutbox(limit=10))
        assert len(claim.rows) == 3
        (done,) = await tracker.ask(CompleteOutboxes((OutboxOutcome(claim.rows[0].id, ok=True),)))
        assert isinstance(done, OutboxCompletion)
        assert done.transition is not None
        assert done.last_notified_at == T0 + 7
        assert await tracker.ask(ListUnattended(now=T0 + 1000, renotification_seconds=300)) != ()
        assert await tracker.ask(GetDispute("nope")) is None


async def test_typed_errors_come_back_and_the_tracker_keeps_answering(db_path: str) -> None:
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        await tracker.ask(RecordDetected(event("d-1")))
        with pytest.raises(InvalidTransition):
            await tracker.ask(_Transition("d-1", "waiting", "x"))
        with pytest.raises(UnknownDispute):
            await tracker.ask(_Transition("missing", "notified", "x"))
        with pytest.raises(StoreFailure, match="UNIQUE"):
            await tracker.ask(RecordDetected(event("d-2", event_id="ev-d-1-initiated")))
        with pytest.raises(StoreFailure, match="bug in a store step"):
            await tracker.ask(_Crash())
        with pytest.raises(StoreFailure, match="names no store step"):
            await tracker.ask(_Unimplemented())
        dispute = await tracker.ask(GetDispute("d-1"))
        assert dispute is not None and dispute.lifecycle_state == "new"
        assert await tracker.ask(GetDispute("d-2")) is None


def _requests_of(module: object) -> list[type[Request[object]]]:
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Request) and obj is not Request
    ]


def test_every_request_names_a_store_step() -> None:
    requests = _requests_of(requests_module)
    assert len(requests) == 44
    # The follow-up rounds' and session escalations' requests live beside their evaluator.
    round_requests = _requests_of(round_requests_module)
    assert len(round_requests) == 8
    for request in requests + round_requests:
        assert request.apply is not Request.apply, request.__name__


def test_a_lost_batch_is_rerun_request_by_request(conn: apsw.Connection) -> None:
    ctx = Context(now=T0, rand=lambda n: bytes(n))
    answers = run_batch(
        conn,
        [RecordDetected(event("d-1")), _RollbackEverything(), RecordDetected(event("d-2"))],
        ctx,
    )
    assert answers[0].error is None and answers[0].value.inserted
    assert isinstance(answers[1].error, StoreFailure)
    assert answers[2].error is None and answers[2].value.inserted
    assert count(conn, "disputes") == 2


def test_a_batch_commits_once_and_isolates_failures(conn: apsw.Connection) -> None:
    commits = []
    conn.set_commit_hook(lambda: commits.append(1) or False)
    ctx = Context(now=T0, rand=lambda n: bytes(n))
    answers = run_batch(
        conn,
        [
            RecordDetected(event("d-1"), messages("initial")),
            _Transition("d-1", "escalated", "x"),
            RecordDetected(event("d-2"), messages("initial")),
            _Transition("d-2", "notified", "initial_notification"),
        ],
        ctx,
    )
    assert [a.error is None for a in answers] == [True, False, True, True]
    assert isinstance(answers[1].error, InvalidTransition)
    assert commits == [1]
    assert count(conn, "notification_outbox") == 6
    assert count(conn, "dispute_state_transitions") == 1


async def test_concurrent_callers_share_commits_and_get_their_own_answers(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_sizes: list[int] = []

    def counting(
        conn: apsw.Connection, requests: list[Request[object]], ctx: Context
    ) -> list[Answer]:
        batch_sizes.append(len(requests))
        return run_batch(conn, requests, ctx)

    monkeypatch.setattr(tracker_module, "run_batch", counting)
    outcomes: dict[int, str] = {}
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        await tracker.ask(RecordDetected(event("base")))

        async def one(i: int) -> None:
            try:
                if i % 10 == 9:
                    await tracker.ask(_Transition("base", "waiting", "x"))
                else:
                    await tracker.ask(RecordDetected(event(f"d-{i}"), messages("initial")))
                outcomes[i] = "ok"
            except InvalidTransition:
                outcomes[i] = "invalid"

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert max(batch_sizes) > 1
    assert outcomes == {i: "invalid" if i % 10 == 9 else "ok" for i in range(200)}
    conn, _ = open_database(db_path)
    assert count(conn, "disputes") == 181
    assert count(conn, "notification_outbox") == 540
    assert count(conn, "dispute_state_transitions") == 0
    conn.close()


async def test_submitted_requests_run_in_inbox_order(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_sizes: list[int] = []

    def counting(
        conn: apsw.Connection, requests: list[Request[object]], ctx: Context
    ) -> list[Answer]:
        batch_sizes.append(len(requests))
        return run_batch(conn, requests, ctx)

    monkeypatch.setattr(tracker_module, "run_batch", counting)
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        pending = []
        for i in range(100):
            # Each transition is only valid if the detection before it already ran.
            pending.append(await tracker.submit(RecordDetected(event(f"d-{i}"))))
            pending.append(
                await tracker.submit(_Transition(f"d-{i}", "notified", "initial_notification"))
            )
        results = [await p.result() for p in pending]
    assert all(r.inserted for r in results[0::2])
    assert [r.from_state for r in results[1::2]] == ["new"] * 100
    assert max(batch_sizes) > 1


async def test_an_external_reader_sees_only_whole_steps(db_path: str) -> None:
    """An operator's sqlite3 (another process, read-only) never sees a dispute without its
    outbox rows while the tracker writes."""
    stop = threading.Event()
    seen: list[tuple[int, int]] = []
    counts = "SELECT (SELECT COUNT(*) FROM disputes), (SELECT COUNT(*) FROM notification_outbox)"

    def read(reader: SqliteProcess) -> None:
        while True:
            last = stop.is_set()
            disputes, outbox = reader.query(counts)[0]
            seen.append((disputes, outbox))
            if last:
                break

    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        with SqliteProcess(db_path, readonly=True) as reader:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.to_thread.run_sync, read, reader)
                while not seen:
                    await trio.sleep(0.001)
                for i in range(150):
                    await tracker.ask(RecordDetected(event(f"d-{i}"), messages("initial")))
                stop.set()
    assert seen[0] == (0, 0)
    assert all(outbox == 3 * disputes for disputes, outbox in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (150, 450)
    assert len(seen) > 2


async def test_offloaded_work_never_blocks_the_event_loop(db_path: str) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with (
        open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(tick)
        await tracker.ask(_Slow(seconds=0.3))
        nursery.cancel_scope.cancel()
    assert ticks >= 10


async def test_a_slow_answer_times_out_and_the_tracker_goes_on(db_path: str) -> None:
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        with pytest.raises(TrackerTimeout):
            await tracker.ask(_Slow(seconds=0.3), timeout=0.05)
        assert await tracker.ask(GetDispute("d-1")) is None


async def test_a_closed_tracker_refuses_requests(db_path: str) -> None:
    async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
        pass
    with pytest.raises(TrackerClosed):
        await tracker.ask(GetDispute("d-1"))


async def test_queued_requests_are_answered_before_close(db_path: str) -> None:
    answered: list[bool] = []
    async with (
        trio.open_nursery() as nursery,
        open_tracker(db_path, wall_clock=FakeWallClock(T0), inbox_size=64) as tracker,
    ):

        async def ask(i: int) -> None:
            try:
                await tracker.ask(RecordDetected(event(f"d-{i}")))
                answered.append(True)
            except TrackerClosed:
                answered.append(False)

        for i in range(30):
            nursery.start_soon(ask, i)
        await trio.testing.wait_all_tasks_blocked()
    assert answered == [True] * 30


async def test_cancellation_lets_the_running_batch_commit(db_path: str) -> None:
    with trio.move_on_after(0.1):
        async with open_tracker(db_path, wall_clock=FakeWallClock(T0)) as tracker:
            await tracker.ask(_Slow(seconds=0.4))
    conn, _ = open_database(db_path)
    assert count(conn, "serbero_daemon_health", "key = 'slow'") == 1
    conn.close()


async def test_inline_mode_runs_under_autojump_clock(
    db_path: str, autojump_clock: trio.testing.MockClock
) -> None:
    clock = FakeWallClock(T0)
    async with open_tracker(db_path, wall_clock=clock, offload=False) as tracker:
        await tracker.ask(RecordDetected(event("d-1"), messages("initial")), timeout=1)
        await trio.sleep(3600)
        clock.advance(3600)
        await tracker.ask(WriteHealth(relays=(RelayHealth("wss://r", "connected", T0),)))
        dispute = await tracker.ask(GetDispute("d-1"), timeout=1)
        assert dispute is not None
    conn, _ = open_database(db_path)
    assert read_health(conn).relays == (RelayHealth("wss://r", "connected", T0),)
    conn.close()


async def test_dispatch_ids_come_from_the_injected_randomness(db_path: str) -> None:
    conn, _ = open_database(db_path)
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " event_timestamp, detected_at) VALUES ('d-1', 'e', 'm', 'buyer', 1, 1)"
    )
    conn.execute(
        "INSERT INTO mediation_events (kind, payload_json, occurred_at)"
        " VALUES ('handoff_prepared', '{}', 1)"
    )
    conn.close()
    async with open_tracker(
        db_path, wall_clock=FakeWallClock(T0), rand=lambda n: b"\xab" * n
    ) as tracker:
        (handoff,) = await tracker.ask(ScanPendingHandoffs())
        record = await tracker.ask(
            RecordDispatch(handoff, "d-1", (RecipientOutcome("A", True),), False, T0)
        )
    parsed = uuid.UUID(record.dispatch_id)
    assert parsed.version == 4
    assert record.dispatch_id == str(parsed) == "abababab-abab-4bab-abab-abababababab"


async def test_opening_failure_is_a_store_failure(tmp_path: object) -> None:
    with pytest.raises(StoreFailure):
        async with open_tracker("/nonexistent-dir/x.db", wall_clock=FakeWallClock(T0)):
            pass
