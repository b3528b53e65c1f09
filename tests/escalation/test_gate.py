"""The gate over a real tracker with scripted deliveries: what gets recorded, atomically, for
each outcome (ESC-13, ESC-16..21, ESC-26..35), and how failures leave handoffs pending."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from serbero.actors.delivery import Delivery, DmIdentity
from serbero.actors.gate import HandoffOutcome
from serbero.actors.tracker import Request, Tracker
from serbero.actors.tracker_requests import (
    ClaimOutbox,
    CompleteOutboxes,
    GetDispute,
    RecordDispatch,
    ScanPendingHandoffs,
)
from serbero.config import SolverConfig
from serbero.protocol.keys import encode_npub
from serbero.store.errors import StoreFailure
from serbero.store.outbox import RETRY_MAX_SECONDS, OutboxOutcome
from tests.escalation.helpers import (
    BUNDLE,
    POLICY,
    SCRIPTED_FAILURE,
    FaultyTracker,
    ScriptedDeliver,
    SecondWriter,
    dispatcher_cycles,
    package,
    solver,
)
from tests.support.clocks import FakeWallClock

A, _ = solver()
B, _ = solver()
R, _ = solver("read")


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def dispatched_audit(writer: SecondWriter) -> list[tuple[Any, ...]]:
    return writer.rows(
        "SELECT session_id, payload_json, rationale_id, prompt_bundle_id, policy_hash, occurred_at"
        " FROM mediation_events WHERE kind = 'escalation_dispatched' ORDER BY id"
    )


@pytest.fixture
def handoff(writer: SecondWriter) -> int:
    writer.add_dispute("d-1")
    writer.add_session("s-1", "d-1")
    return writer.add_handoff(package("d-1", "s-1"), session_id="s-1")


# --- recording a dispatch ------------------------------------------------------------------


async def test_all_succeeded_is_dispatched_with_its_paired_audit_event(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    deliver = ScriptedDeliver()
    t = wall_clock.now
    async with dispatcher_cycles(tracker, deliver, solvers=[A, B], wall_clock=wall_clock) as cycle:
        with capture_logs() as logs:
            report = await cycle()
    assert report.outcomes == {HandoffOutcome.DISPATCHED: 1}
    ((dispatch_id, *row),) = writer.dispatches()
    assert row == ["d-1", "s-1", handoff, f"{A.pubkey},{B.pubkey}", t, t, "dispatched", 0]
    assert dispatched_audit(writer) == [
        (
            "s-1",
            f'{{"dispatch_id":"{dispatch_id}","dispute_id":"d-1","fallback_broadcast":false,'
            f'"handoff_event_id":{handoff},"status":"dispatched",'
            f'"target_solver":"{A.pubkey},{B.pubkey}"}}',
            None,
            BUNDLE,
            POLICY,
            t,
        )
    ]
    assert writer.notifications() == [
        ("d-1", A.pubkey, t, "sent", None, "mediation_escalation_recommended"),
        ("d-1", B.pubkey, t, "sent", None, "mediation_escalation_recommended"),
    ]
    (line,) = events(logs, "phase4_dispatched")
    assert line["log_level"] == "info"
    assert (line["dispute_id"], line["handoff_event_id"], line["recipient_count"]) == (
        "d-1",
        handoff,
        2,
    )
    assert line["via_fallback"] is False


async def test_partial_success_is_dispatched_in_attempt_order(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    deliver = ScriptedDeliver(failing=[A.pubkey])
    async with dispatcher_cycles(tracker, deliver, solvers=[A, B], wall_clock=wall_clock) as cycle:
        with capture_logs() as logs:
            await cycle()
    ((_, *row),) = writer.dispatches()
    assert (row[3], row[6]) == (f"{A.pubkey},{B.pubkey}", "dispatched")
    assert [(n[1], n[3], n[4]) for n in writer.notifications()] == [
        (A.pubkey, "failed", SCRIPTED_FAILURE),
        (B.pubkey, "sent", None),
    ]
    (warning,) = events(logs, "phase4_recipient_failed")
    assert (warning["log_level"], warning["solver"]) == ("warning", A.pubkey)


async def test_keys_are_recorded_in_lowercase_hex_whatever_the_config_spelling(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    """BEY-12: `target_solver` and the notifications rows hold the normalised key."""
    spelled = [
        SolverConfig.from_text(encode_npub(A.key), "write"),
        SolverConfig.from_text(B.key.upper(), "write"),
    ]
    async with dispatcher_cycles(
        tracker, ScriptedDeliver(), solvers=spelled, wall_clock=wall_clock
    ) as cycle:
        await cycle()
    ((_, *row),) = writer.dispatches()
    assert row[3] == f"{A.key},{B.key}"
    assert [n[1] for n in writer.notifications()] == [A.key, B.key]


async def test_all_failed_is_send_failed_and_consumed(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    deliver = ScriptedDeliver(failing=[A.pubkey, B.pubkey])
    async with dispatcher_cycles(tracker, deliver, solvers=[B, A], wall_clock=wall_clock) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.SEND_FAILED: 1}
        assert (await cycle()).examined == 0
    ((dispatch_id, *row),) = writer.dispatches()
    assert (row[3], row[6]) == (f"{B.pubkey},{A.pubkey}", "send_failed")
    (audit,) = writer.audit("escalation_dispatched")
    assert (audit["dispatch_id"], audit["status"]) == (dispatch_id, "send_failed")
    assert [n[3] for n in writer.notifications()] == ["failed", "failed"]
    assert len(deliver.calls) == 2


async def test_dms_no_relay_accepted_are_queued_for_the_outbox_until_delivered_or_superseded(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    """#12 item 5: each failed recipient's DM is queued with the dispatch, dated as it went
    out and tied to its handoff (so the retry is the same wrap, BEY-26), and the sender is
    woken for it; the outbox drops it once the dispute is resolved."""
    deliver = ScriptedDeliver(failing=[A.pubkey])
    t = wall_clock.now
    rings: list[int] = []
    async with dispatcher_cycles(
        tracker,
        deliver,
        solvers=[A, B],
        wall_clock=wall_clock,
        ring_sender=lambda: rings.append(
            writer.rows("SELECT COUNT(*) FROM notification_outbox")[0][0]
        ),
    ) as cycle:
        with capture_logs() as logs:
            await cycle()
    assert rings == [1], "rung once, after the retry was committed"
    ((_, body, _),) = [call for call in deliver.calls if call[0] == A.pubkey]
    assert writer.rows(
        "SELECT solver_pubkey, notif_type, body, cause, created_at, handoff_event_id, state"
        " FROM notification_outbox"
    ) == [
        (
            A.pubkey,
            "mediation_escalation_recommended",
            body,
            f"handoff:{handoff}",
            t,
            handoff,
            "pending",
        )
    ]
    (dispatched,) = events(logs, "phase4_dispatched")
    assert dispatched["retries_queued"] == 1
    claim = await tracker.ask(ClaimOutbox(limit=10))
    assert [row.handoff_event_id for row in claim.rows] == [handoff]
    await tracker.ask(CompleteOutboxes((OutboxOutcome(claim.rows[0].id, False, error="refused"),)))
    writer.set_state("d-1", "resolved")
    wall_clock.advance(RETRY_MAX_SECONDS)
    assert (await tracker.ask(ClaimOutbox(limit=10))).abandoned == 1


async def test_a_key_that_cannot_be_parsed_is_not_queued_again(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    broken = SolverConfig.from_text("npub1-not-a-key", "write")
    deliver = ScriptedDeliver()
    rings: list[None] = []
    async with dispatcher_cycles(
        tracker,
        deliver,
        solvers=[broken, B],
        wall_clock=wall_clock,
        ring_sender=lambda: rings.append(None),
    ) as cycle:
        await cycle()
    assert writer.rows("SELECT COUNT(*) FROM notification_outbox") == [(0,)]
    assert rings == [], "nothing queued, nothing to wake the sender for"


async def test_fallback_flag_flows_into_row_and_audit(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    deliver = ScriptedDeliver()
    async with dispatcher_cycles(
        tracker, deliver, solvers=[R], fallback=True, wall_clock=wall_clock
    ) as cycle:
        await cycle()
    ((_, *row),) = writer.dispatches()
    assert (row[3], row[7]) == (R.pubkey, 1)
    (audit,) = writer.audit("escalation_dispatched")
    assert audit["fallback_broadcast"] is True


async def test_time_of_the_dispatch_is_taken_before_the_send_loop(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    inner = ScriptedDeliver()

    async def slow(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        wall_clock.advance(7)
        return await inner(solver, body, dm)

    t = wall_clock.now
    async with dispatcher_cycles(tracker, slow, solvers=[A, B], wall_clock=wall_clock) as cycle:
        await cycle()
    ((_, *row),) = writer.dispatches()
    assert (row[4], row[5]) == (t, t)
    assert [n[2] for n in writer.notifications()] == [t, t]
    (audit_row,) = dispatched_audit(writer)
    assert audit_row[5] == t
    assert [call[2] for call in inner.calls] == [t, t]
    assert inner.calls[0][1] == inner.calls[1][1]


async def test_audit_insert_failure_leaves_neither_row_and_resends_next_cycle(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    writer.fail_inserts("no_audit", "mediation_events", "NEW.kind = 'escalation_dispatched'")
    deliver = ScriptedDeliver()
    async with dispatcher_cycles(tracker, deliver, solvers=[A], wall_clock=wall_clock) as cycle:
        with capture_logs() as logs:
            assert (await cycle()).outcomes == {HandoffOutcome.LEFT_PENDING: 1}
        assert writer.dispatches() == []
        assert dispatched_audit(writer) == []
        assert len(writer.notifications()) == 1
        (error,) = events(logs, "phase4_dispatch_record_failed")
        assert error["log_level"] == "error"
        assert "again next cycle" in error["hint"]
        writer.drop_trigger("no_audit")
        assert (await cycle()).outcomes == {HandoffOutcome.DISPATCHED: 1}
    assert [call[0] for call in deliver.calls] == [A.pubkey, A.pubkey]
    assert deliver.calls[0][1] == deliver.calls[1][1]
    assert len(writer.dispatches()) == 1
    assert len(dispatched_audit(writer)) == 1
    assert len(writer.notifications()) == 2


async def test_unique_violation_after_sending_leaves_the_handoff_to_the_next_cycle(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    # ESC-30: another dispatch row for the handoff lands between the scan and our commit.
    inner = ScriptedDeliver()

    async def racing(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        writer.execute(
            "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, session_id,"
            " handoff_event_id, target_solver, dispatched_at, created_at)"
            " VALUES ('other', 'd-1', 's-1', ?, 'x', 1, 1)",
            (handoff,),
        )
        return await inner(solver, body, dm)

    async with dispatcher_cycles(tracker, racing, solvers=[A], wall_clock=wall_clock) as cycle:
        with capture_logs() as logs:
            assert (await cycle()).outcomes == {HandoffOutcome.LEFT_PENDING: 1}
        assert (await cycle()).examined == 0
    assert [r[0] for r in writer.dispatches()] == ["other"]
    assert dispatched_audit(writer) == []
    assert len(events(logs, "phase4_dispatch_record_failed")) == 1


async def test_notification_row_failure_is_a_warning_and_the_dispatch_still_commits(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    writer.fail_inserts("no_rows", "notifications", f"NEW.solver_pubkey = '{A.pubkey}'")
    async with dispatcher_cycles(
        tracker, ScriptedDeliver(), solvers=[A, B], wall_clock=wall_clock
    ) as cycle:
        with capture_logs() as logs:
            assert (await cycle()).outcomes == {HandoffOutcome.DISPATCHED: 1}
    assert [n[1] for n in writer.notifications()] == [B.pubkey]
    ((_, *row),) = writer.dispatches()
    assert row[3] == f"{A.pubkey},{B.pubkey}"
    (warning,) = events(logs, "notification_record_failed")
    assert (warning["log_level"], warning["solver_pubkey"], warning["status"]) == (
        "warning",
        A.pubkey,
        "sent",
    )


async def test_a_crashing_delivery_is_that_recipients_failure(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    inner = ScriptedDeliver()

    async def flaky(solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        if solver is A:
            raise OSError("socket gone")
        return await inner(solver, body, dm)

    async with dispatcher_cycles(tracker, flaky, solvers=[A, B], wall_clock=wall_clock) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.DISPATCHED: 1}
    (failed, sent) = writer.notifications()
    assert failed[3] == "failed"
    assert failed[4].startswith("notification error: gift-wrap send failed: ")
    assert "socket gone" in failed[4]
    assert sent[1:4:2] == (B.pubkey, "sent")


# --- supersession and unroutable -----------------------------------------------------------


async def test_supersession_is_once_per_handoff_and_copies_the_pins(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock
) -> None:
    writer.add_dispute("d-res", state="resolved")
    writer.add_session("s-res", "d-res")
    scoped = writer.add_handoff(package("d-res", "s-res"), session_id="s-res")
    bare = writer.add_handoff(package("d-res"), pins=(None, None))
    deliver = ScriptedDeliver()
    async with dispatcher_cycles(tracker, deliver, solvers=[A], wall_clock=wall_clock) as cycle:
        with capture_logs() as logs:
            for _ in range(3):
                assert (await cycle()).outcomes == {HandoffOutcome.SUPERSEDED: 2}
    assert deliver.calls == []
    assert writer.dispatches() == []
    assert writer.rows(
        "SELECT session_id, json_extract(payload_json, '$.handoff_event_id'), rationale_id,"
        " prompt_bundle_id, policy_hash, occurred_at FROM mediation_events"
        " WHERE kind = 'escalation_superseded' ORDER BY id"
    ) == [
        ("s-res", scoped, None, BUNDLE, POLICY, wall_clock.now),
        (None, bare, None, None, None, wall_clock.now),
    ]
    lines = events(logs, "phase4_superseded")
    assert len(lines) == 6
    assert {line["log_level"] for line in lines} == {"info"}


async def test_unroutable_logs_every_cycle_and_records_once(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    async with dispatcher_cycles(
        tracker, ScriptedDeliver(), solvers=[R], fallback=False, wall_clock=wall_clock
    ) as cycle:
        with capture_logs() as logs:
            await cycle()
            await cycle()
    lines = events(logs, "phase4_unroutable")
    assert len(lines) == 2
    assert lines[0]["log_level"] == "error"
    assert {k: lines[0][k] for k in ("dispute_id", "handoff_event_id")} == {
        "dispute_id": "d-1",
        "handoff_event_id": handoff,
    }
    assert lines[0]["configured_solver_count"] == 1
    assert lines[0]["config_fallback_to_all_solvers"] is False
    assert "write" in lines[0]["hint"] and "fallback_to_all_solvers" in lines[0]["hint"]
    (row,) = writer.rows(
        "SELECT session_id, prompt_bundle_id, policy_hash FROM mediation_events"
        " WHERE kind = 'escalation_dispatch_unroutable'"
    )
    assert row == ("s-1", BUNDLE, POLICY)


# --- failures that leave a handoff pending -------------------------------------------------


async def test_a_dispute_lookup_error_writes_nothing_and_retries(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    broken = [True]

    def fault(request: Request[Any]) -> Exception | None:
        if isinstance(request, GetDispute) and broken[0]:
            return StoreFailure("GetDispute: disk I/O error")
        return None

    faulty = FaultyTracker(tracker, fault)
    deliver = ScriptedDeliver()
    async with dispatcher_cycles(faulty, deliver, solvers=[A], wall_clock=wall_clock) as cycle:  # type: ignore[arg-type]
        before = writer.count("mediation_events")
        with capture_logs() as logs:
            assert (await cycle()).outcomes == {HandoffOutcome.LEFT_PENDING: 1}
        assert writer.count("mediation_events") == before
        assert deliver.calls == []
        assert events(logs, "phase4_dispute_lookup_failed")[0]["log_level"] == "error"
        broken[0] = False
        assert (await cycle()).outcomes == {HandoffOutcome.DISPATCHED: 1}


async def test_a_failed_parse_failed_insert_leaves_the_handoff_pending(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock
) -> None:
    handoff = writer.add_handoff("{{{")
    writer.fail_inserts(
        "no_parse_failed", "mediation_events", "NEW.kind = 'escalation_dispatch_parse_failed'"
    )
    async with dispatcher_cycles(
        tracker, ScriptedDeliver(), solvers=[A], wall_clock=wall_clock
    ) as cycle:
        with capture_logs() as logs:
            assert (await cycle()).outcomes == {HandoffOutcome.LEFT_PENDING: 1}
        (parse_log,) = events(logs, "phase4_parse_failed")
        assert parse_log["log_level"] == "error"
        assert (parse_log["handoff_event_id"], parse_log["dispute_id"]) == (handoff, "unknown")
        assert parse_log["error"]
        assert events(logs, "phase4_parse_failed_record_failed")[0]["log_level"] == "error"
        writer.drop_trigger("no_parse_failed")
        assert (await cycle()).outcomes == {HandoffOutcome.DESERIALIZE_FAILED: 1}
        assert (await cycle()).examined == 0


async def test_a_bug_on_one_handoff_does_not_stop_the_batch(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock
) -> None:
    writer.add_dispute("d-bug")
    writer.add_dispute("d-ok")
    buggy = writer.add_handoff(package("d-bug"))
    fine = writer.add_handoff(package("d-ok"))

    def fault(request: Request[Any]) -> Exception | None:
        if isinstance(request, GetDispute) and request.dispute_id == "d-bug":
            return RuntimeError("bug")
        return None

    faulty = FaultyTracker(tracker, fault)
    async with dispatcher_cycles(
        faulty,  # type: ignore[arg-type]
        ScriptedDeliver(),
        solvers=[A],
        wall_clock=wall_clock,
    ) as cycle:
        with capture_logs() as logs:
            report = await cycle()
    assert report.outcomes == {HandoffOutcome.LEFT_PENDING: 1, HandoffOutcome.DISPATCHED: 1}
    (crash,) = events(logs, "phase4_handoff_failed")
    assert (crash["log_level"], crash["handoff_event_id"]) == ("error", buggy)
    assert [r[3] for r in writer.dispatches()] == [fine]


async def test_tracker_requests_are_the_documented_ones(
    tracker: Tracker, writer: SecondWriter, wall_clock: FakeWallClock, handoff: int
) -> None:
    # The scan pages with ScanPendingHandoffs and the commit is one RecordDispatch.
    seen: list[str] = []

    def spy(request: Request[Any]) -> Exception | None:
        seen.append(type(request).__name__)
        return None

    async with dispatcher_cycles(
        FaultyTracker(tracker, spy),  # type: ignore[arg-type]
        ScriptedDeliver(),
        solvers=[A, B],
        wall_clock=wall_clock,
    ) as cycle:
        await cycle()
    assert seen == [
        ScanPendingHandoffs.__name__,
        GetDispute.__name__,
        "RecordNotifications",
        "RecordNotifications",
        RecordDispatch.__name__,
    ]
