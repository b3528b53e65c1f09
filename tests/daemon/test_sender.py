"""The outbox sender's loop on Trio's autojump clock: it wakes on rings and on the earliest
retry, never busy-loops, keeps one DM per (dispute, solver) in flight, and survives a
delivery that raises (the courier is scripted; the real one is tested in
test_courier.py)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from serbero.actors.delivery import SEND_FAILED_PREFIX, Delivery, DmIdentity
from serbero.actors.relay_pool import RelayPool
from serbero.actors.sender import (
    COMPLETION_LINGER,
    IDLE_RECHECK_SECONDS,
    SENDER_CONCURRENCY,
    Doorbell,
    OutboxSender,
    SenderStats,
)
from serbero.actors.tracker import Request, Tracker, open_tracker
from serbero.actors.tracker_requests import RecordAssignment, RecordDetected
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from serbero.store.connection import open_database
from serbero.store.disputes import DisputeEvent, record_detected
from serbero.store.outbox import (
    FAILED_ROW_INTERVAL_SECONDS,
    FAILED_ROWS_IN_FULL,
    RETRY_INITIAL_SECONDS,
    RETRY_MAX_SECONDS,
    OutboxMessage,
)
from serbero.store.summaries import SummaryQueued, begin_summary, record_summary
from tests.daemon.support import count_rows, query
from tests.store.helpers import generated_summary, open_classified
from tests.support.clocks import START as T0
from tests.support.clocks import TrioWallClock

DAY = 86_400

SOLVERS = [SolverConfig.from_text(Keys.generate().public_hex) for _ in range(2)]


class StubPool:
    """Only what the sender asks the pool itself: has a relay link come up since? (Never,
    here: the link is up from the start.)"""

    def links_opened(self) -> int:
        return 1

    async def wait_link_opened(self, seen: int) -> int:
        await trio.sleep_forever()


# One scripted DM: (solver, body, which DM) -> outcome.
DeliverFn = Callable[[SolverConfig, str, DmIdentity], Awaitable[Delivery]]


class ScriptedCourier:
    """A courier whose deliveries are the test's function; it has no keys to prepare."""

    def __init__(self, deliver: DeliverFn) -> None:
        self.deliver = deliver

    def prepare_spare(self) -> bool:
        return False


class CountingTracker:
    """The real tracker, counting the requests the sender makes."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self.asked: Counter[str] = Counter()

    async def ask(self, request: Request[Any], **kwargs: Any) -> Any:
        self.asked[type(request).__name__] += 1
        return await self._tracker.ask(request, **kwargs)


def stub_sender(
    tracker: Tracker | CountingTracker,
    deliver: DeliverFn,
    solvers: Sequence[SolverConfig] = SOLVERS,
    *,
    doorbell: Doorbell | None = None,
    concurrency: int = SENDER_CONCURRENCY,
) -> OutboxSender:
    """The sender on the stub pool, the scripted `deliver` and the Trio-driven wall clock;
    figures in `.stats`."""
    return OutboxSender(
        cast(Tracker, tracker),
        cast(RelayPool, StubPool()),
        ScriptedCourier(deliver),
        solvers,
        doorbell=Doorbell() if doorbell is None else doorbell,
        stats=SenderStats(),
        wall_clock=TrioWallClock(),
        concurrency=concurrency,
    )


def deliver_slowly() -> tuple[DeliverFn, list[tuple[str, str, float, float]]]:
    """A delivery where every DM takes 3 s and succeeds, and where each one's (solver, body,
    began, ended) is noted as it finishes."""
    spans: list[tuple[str, str, float, float]] = []

    async def slow_deliver(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        began = trio.current_time()
        await trio.sleep(3)
        spans.append((solver.pubkey, body, began, trio.current_time()))
        return Delivery(ok=True, error=None, retryable=True)

    return slow_deliver, spans


def event(status: str) -> DisputeEvent:
    return DisputeEvent("d-1", f"ev-{status}", "ab" * 32, T0, status, "buyer")


async def test_the_sender_waits_without_spinning_and_survives_a_raising_delivery(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "serbero.db")
    calls: list[tuple[float, str]] = []

    async def fake_deliver(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        calls.append((trio.current_time(), body))
        first = len(calls) == 1
        await trio.sleep(1)
        if first:
            raise RuntimeError("a bug in one delivery")
        return Delivery(ok=True, error=None, retryable=True)

    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        counting = CountingTracker(tracker)
        doorbell = Doorbell()
        sender = stub_sender(counting, fake_deliver, doorbell=doorbell)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(5 * IDLE_RECHECK_SECONDS + 7)
            assert counting.asked["ClaimOutbox"] <= 7, "idle: one look per recheck period"

            messages = tuple(OutboxMessage(s.pubkey, "initial") for s in SOLVERS)
            await tracker.ask(RecordDetected(event=event("initiated"), messages=messages))
            taken = tuple(OutboxMessage(s.pubkey, "assignment") for s in SOLVERS)
            await tracker.ask(
                RecordAssignment(event=event("in-progress"), assigned_solver=None, messages=taken)
            )
            start = trio.current_time()
            doorbell.ring()
            await trio.sleep(RETRY_INITIAL_SECONDS + 10)
            nursery.cancel_scope.cancel()
    assert [body for _, body in calls] == ["assignment"] * 3, "initials were dropped as obsolete"
    assert calls[0][0] == calls[1][0] == start, "both solvers at once"
    assert RETRY_INITIAL_SECONDS <= calls[2][0] - start <= RETRY_INITIAL_SECONDS + 2
    (error,) = query(db, "SELECT error_message FROM notifications WHERE status = 'failed'")[0]
    assert "a bug in one delivery" in error
    assert count_rows(db, "notifications", "status = 'sent'") == 2
    assert count_rows(db, "notification_outbox", "state = 'pending'") == 0


async def test_one_dm_per_dispute_and_solver_in_flight_in_decision_order(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    """BEY-22: an assignment decided while the initial notices are on their way waits for
    them; both solvers are served concurrently."""
    db = str(tmp_path / "serbero.db")
    slow_deliver, spans = deliver_slowly()
    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        doorbell = Doorbell()
        sender = stub_sender(tracker, slow_deliver, doorbell=doorbell)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            messages = tuple(OutboxMessage(s.pubkey, "initial") for s in SOLVERS)
            await tracker.ask(RecordDetected(event=event("initiated"), messages=messages))
            doorbell.ring()
            await trio.sleep(1)
            taken = tuple(OutboxMessage(s.pubkey, "assignment") for s in SOLVERS)
            await tracker.ask(
                RecordAssignment(event=event("in-progress"), assigned_solver=None, messages=taken)
            )
            doorbell.ring()
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    for solver in SOLVERS:
        mine = [span for span in spans if span[0] == solver.pubkey]
        assert [body for _, body, _, _ in mine] == ["initial", "assignment"]
        assert mine[1][2] >= mine[0][3], "the assignment started after the initial ended"
    assert spans[0][2] == spans[1][2], "different solvers are not serialised"


# --- the hot path: decisions claim their own rows and hand them over -------------------------


async def test_rows_a_decision_claimed_go_out_without_a_claim_and_complete_in_one_batch(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "serbero.db")
    delivered: list[tuple[str, float]] = []

    async def fake_deliver(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        delivered.append((solver.pubkey, trio.current_time()))
        await trio.sleep(1)
        return Delivery(ok=True, error=None, retryable=True)

    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        counting = CountingTracker(tracker)
        sender = stub_sender(counting, fake_deliver)
        stats = sender.stats
        empty = sender.reserve(2)
        assert empty.granted == 0, "no room before the sender runs"
        empty.release()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(1)
            asked_before = counting.asked.copy()
            lease = sender.reserve(len(SOLVERS))
            assert lease.granted == len(SOLVERS)
            messages = tuple(OutboxMessage(s.pubkey, "initial") for s in SOLVERS)
            result = await tracker.ask(
                RecordDetected(event=event("initiated"), messages=messages, claim=lease.granted)
            )
            start = trio.current_time()
            lease.hand_over(result.claimed, left_behind=False)
            assert stats.in_flight == len(SOLVERS)
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    assert sorted(delivered) == sorted((s.pubkey, start) for s in SOLVERS)
    asked = counting.asked - asked_before
    assert asked == Counter({"CompleteOutboxes": 1}), "no claim, one batch of outcomes"
    assert stats.delivered == len(SOLVERS) and stats.in_flight == 0
    assert count_rows(db, "notification_outbox", "state = 'sent'") == len(SOLVERS)
    assert query(db, "SELECT lifecycle_state FROM disputes") == [("notified",)]


async def test_outcomes_a_few_ms_apart_share_one_commit(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    """A fan-out's OKs come back a few ms apart: they are recorded together, after
    COMPLETION_LINGER; an outcome that comes later than that gets a commit of its own."""
    db = str(tmp_path / "serbero.db")
    solvers = [SolverConfig.from_text(Keys.generate().public_hex) for _ in range(4)]
    finish_after = dict(
        zip(
            (s.pubkey for s in solvers),
            (0.0, COMPLETION_LINGER * 0.4, COMPLETION_LINGER * 0.8, COMPLETION_LINGER * 10),
            strict=True,
        )
    )

    async def fake_deliver(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        await trio.sleep(1 + finish_after[solver.pubkey])
        return Delivery(ok=True, error=None, retryable=True)

    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        counting = CountingTracker(tracker)
        sender = stub_sender(counting, fake_deliver, solvers)
        stats = sender.stats
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(1)
            asked_before = counting.asked.copy()
            lease = sender.reserve(len(solvers))
            messages = tuple(OutboxMessage(s.pubkey, "initial") for s in solvers)
            result = await tracker.ask(
                RecordDetected(event=event("initiated"), messages=messages, claim=lease.granted)
            )
            lease.hand_over(result.claimed, left_behind=False)
            await trio.sleep(1 + COMPLETION_LINGER * 2)
            assert stats.delivered == 3, "the first three, together"
            assert (counting.asked - asked_before)["CompleteOutboxes"] == 1
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert (counting.asked - asked_before)["CompleteOutboxes"] == 2
    assert stats.delivered == len(solvers) and stats.in_flight == 0
    assert count_rows(db, "notification_outbox", "state = 'sent'") == len(solvers)


async def test_room_is_refused_while_rows_wait_in_the_outbox_so_the_oldest_go_first(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    """A sender with one slot: the second dispute's rows are left in the outbox, and the
    third dispute gets no room until they went out, oldest first."""
    db = str(tmp_path / "serbero.db")
    order: list[str] = []

    async def fake_deliver(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        order.append(body)
        await trio.sleep(1)
        return Delivery(ok=True, error=None, retryable=True)

    solver = SOLVERS[:1]
    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        sender = stub_sender(tracker, fake_deliver, solver, concurrency=1)

        async def decide(dispute_id: str) -> None:
            lease = sender.reserve(1)
            facts = DisputeEvent(dispute_id, f"ev-{dispute_id}", "ab" * 32, T0, "initiated", "x")
            messages = (OutboxMessage(solver[0].pubkey, dispute_id),)
            result = await tracker.ask(
                RecordDetected(event=facts, messages=messages, claim=lease.granted)
            )
            left = len(result.outbox_ids) > len(result.claimed)
            lease.hand_over(result.claimed, left_behind=left)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(1)
            await decide("d-1")
            await decide("d-2")
            refused = sender.reserve(1)
            assert refused.granted == 0, "d-2 waits in the outbox"
            refused.release()
            await decide("d-3")
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    assert order == ["d-1", "d-2", "d-3"]
    assert count_rows(db, "notification_outbox", "state = 'sent'") == 3


async def test_a_claimed_assignment_waits_for_the_initial_in_flight_for_its_solver(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
) -> None:
    """BEY-22 on the hot path: the assignment cannot be claimed behind its pair's initial;
    it goes out as soon as the initial's outcome is recorded."""
    db = str(tmp_path / "serbero.db")
    slow_deliver, spans = deliver_slowly()
    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        sender = stub_sender(tracker, slow_deliver)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(1)
            lease = sender.reserve(2)
            messages = tuple(OutboxMessage(s.pubkey, "initial") for s in SOLVERS)
            detected = await tracker.ask(
                RecordDetected(event=event("initiated"), messages=messages, claim=lease.granted)
            )
            lease.hand_over(detected.claimed, left_behind=False)
            await trio.sleep(1)
            lease = sender.reserve(2)
            assert lease.granted == 2
            taken = tuple(OutboxMessage(s.pubkey, "assignment") for s in SOLVERS)
            assigned = await tracker.ask(
                RecordAssignment(
                    event=event("in-progress"), assigned_solver=None, messages=taken, claim=2
                )
            )
            assert assigned.claimed == ()
            lease.hand_over(assigned.claimed, left_behind=True)
            await trio.sleep(10)
            nursery.cancel_scope.cancel()
    for solver in SOLVERS:
        mine = [span for span in spans if span[0] == solver.pubkey]
        assert [body for _, body, _, _ in mine] == ["initial", "assignment"]
        # Its outcome is recorded COMPLETION_LINGER after the initial is done: then it goes.
        assert mine[1][2] == pytest.approx(mine[0][3] + COMPLETION_LINGER)


async def test_a_dm_refused_all_day_is_retried_all_day_with_a_bounded_audit_trail(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Retrying forever stays, but a DM every relay refuses for a day writes its first
    FAILED_ROWS_IN_FULL failed rows, then at most one an hour: 3 + 24 on the first day,
    while the row counts every attempt (#12 item 6)."""
    db = str(tmp_path / "serbero.db")
    attempts: list[float] = []

    async def refuse(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        attempts.append(trio.current_time())
        return Delivery(ok=False, error=f"{SEND_FAILED_PREFIX}blocked: no", retryable=True)

    solver = SOLVERS[:1]
    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        doorbell = Doorbell()
        sender = stub_sender(tracker, refuse, solver, doorbell=doorbell)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            messages = (OutboxMessage(solver[0].pubkey, "initial"),)
            await tracker.ask(RecordDetected(event=event("initiated"), messages=messages))
            doorbell.ring()
            await trio.sleep(DAY)
            nursery.cancel_scope.cancel()
    failed_rows = count_rows(db, "notifications", "status = 'failed'")
    assert len(attempts) >= DAY // RETRY_MAX_SECONDS, "still retried every ten minutes"
    assert query(db, "SELECT attempts, state FROM notification_outbox") == [
        (len(attempts), "pending")
    ]
    assert failed_rows <= FAILED_ROWS_IN_FULL + DAY // FAILED_ROW_INTERVAL_SECONDS
    assert failed_rows >= FAILED_ROWS_IN_FULL + DAY // FAILED_ROW_INTERVAL_SECONDS - 4
    stamps = [row[0] for row in query(db, "SELECT sent_at FROM notifications ORDER BY id")]
    later = stamps[FAILED_ROWS_IN_FULL - 1 :]
    assert all(b - a >= FAILED_ROW_INTERVAL_SECONDS for a, b in itertools.pairwise(later))


# --- what a completion queues goes out at once -------------------------------------------------


def _summary_queued(db: str, solvers: Sequence[SolverConfig]) -> None:
    """A database with a summary stored and its DM queued to `solvers` (MED-110..112)."""
    conn, _ = open_database(db)
    try:
        record_detected(conn, event("initiated"), (), T0)
        open_classified(conn)
        job = begin_summary(conn, "s-1", T0)
        assert job is not None
        summary = generated_summary(job)
        recorded = record_summary(conn, job, summary, [s.key for s in solvers], T0)
        assert isinstance(recorded, SummaryQueued)
    finally:
        conn.close()


async def test_the_notice_a_failed_summary_escalates_with_goes_out_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """MED-113: every summary DM fails for good; the commit recording the last failure
    escalates the session and queues the solvers' notice, which the sender sends right
    after that commit, not at its next look at an idle outbox."""
    db = str(tmp_path / "serbero.db")
    _summary_queued(db, SOLVERS)
    sent: list[tuple[str, str, float]] = []

    async def refuse_summaries(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        await trio.sleep(1)
        if "The fiat arrived late." in body:
            return Delivery(ok=False, error="invalid pubkey: scripted", retryable=False)
        sent.append((solver.pubkey, body, trio.current_time()))
        return Delivery(ok=True, error=None, retryable=True)

    async with open_tracker(db, wall_clock=TrioWallClock(), offload=False) as tracker:
        sender = stub_sender(tracker, refuse_summaries)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run)
            await trio.sleep(IDLE_RECHECK_SECONDS / 2)
            nursery.cancel_scope.cancel()
    assert query(db, "SELECT state FROM mediation_sessions") == [("escalation_recommended",)]
    assert sorted(solver for solver, _, _ in sent) == sorted(s.pubkey for s in SOLVERS)
    # The summary DMs end at 1 s and are recorded together; the notice takes 1 s.
    assert [at for _, _, at in sent] == [pytest.approx(2 + COMPLETION_LINGER)] * len(SOLVERS)
    assert count_rows(
        db,
        "notification_outbox",
        "notif_type = 'mediation_escalation_recommended' AND state = 'sent'",
    ) == len(SOLVERS)
