"""ESC-AS-2 … ESC-AS-24 end to end: handoffs inserted by a second SQLite writer, the gate and
scanner over the tracker, DMs published through a real loopback relay and opened by nostr-sdk
solver inboxes. Each scenario counts cycles (the cadence is tested under a virtual clock in
test_scanner.py)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from serbero.actors.gate import HandoffOutcome
from serbero.protocol.handoff import (
    HANDOFF_DM_VERSION,
    HANDOFF_JSON_LABEL,
    decode_handoff_package,
    parse_handoff_dm,
    render_handoff_dm,
)
from serbero.protocol.texts import NO_SESSION_MARKER
from tests.escalation.conftest import RelayEnv
from tests.escalation.helpers import BUNDLE, POLICY, RECIPE_RECONCILIATION, package

DISPATCHED = HandoffOutcome.DISPATCHED


def assert_dispatch(
    env: RelayEnv,
    handoff_id: int,
    *,
    dispute_id: str,
    session_id: str | None,
    targets: list[str],
    status: str = "dispatched",
    fallback: bool = False,
    failed: tuple[str, ...] = (),
    pins: tuple[str | None, str | None] = (BUNDLE, POLICY),
) -> str:
    """The handoff's single dispatch row, its paired audit event and one attempt row per
    recipient agree with each other and with the spec (ESC-26..28, ESC-31/32)."""
    rows = [r for r in env.writer.dispatches() if r[3] == handoff_id]
    assert len(rows) == 1
    dispatch_id, d_id, s_id, h_id, target, dispatched_at, created_at, st, fb = rows[0]
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", dispatch_id
    )
    assert uuid.UUID(dispatch_id).version == 4
    assert (d_id, s_id, h_id, target, st, fb) == (
        dispute_id,
        session_id,
        handoff_id,
        ",".join(targets),
        status,
        int(fallback),
    )
    assert dispatched_at == created_at
    (audit,) = env.writer.rows(
        "SELECT session_id, payload_json, rationale_id, prompt_bundle_id, policy_hash,"
        " occurred_at FROM mediation_events WHERE kind = 'escalation_dispatched'"
        " AND json_extract(payload_json, '$.handoff_event_id') = ?",
        (handoff_id,),
    )
    assert audit[0] == session_id
    assert audit[2] is None
    assert (audit[3], audit[4]) == pins
    assert audit[5] == dispatched_at
    assert audit[1] == json.dumps(
        {
            "dispatch_id": dispatch_id,
            "dispute_id": dispute_id,
            "fallback_broadcast": fallback,
            "handoff_event_id": handoff_id,
            "status": status,
            "target_solver": ",".join(targets),
        },
        separators=(",", ":"),
    )
    attempts = [n for n in env.writer.notifications() if n[0] == dispute_id]
    assert [n[1] for n in attempts] == targets
    for _, pubkey, sent_at, n_status, error, notif_type in attempts:
        assert sent_at == dispatched_at
        assert notif_type == "mediation_escalation_recommended"
        if pubkey in failed:
            assert n_status == "failed"
            assert error
        else:
            assert (n_status, error) == ("sent", None)
    return str(dispatch_id)


def open_dispute(env: RelayEnv, dispute_id: str, *, assigned: str | None = None) -> str:
    """An open dispute with a session, and its handoff; returns the session id."""
    session_id = f"s-{dispute_id}"
    env.writer.add_dispute(dispute_id, assigned=assigned)
    env.writer.add_session(session_id, dispute_id)
    return session_id


def no_escalation_rows(env: RelayEnv) -> None:
    assert env.writer.dispatches() == []
    assert env.writer.notifications() == []


# --- routing and delivery ------------------------------------------------------------------


async def test_as2_targeted_to_the_write_assignee(env: RelayEnv) -> None:
    a, b = env.solver(), env.solver()
    session = open_dispute(env, "d-2", assigned=a.pubkey)
    handoff_id = env.writer.add_handoff(package("d-2", session), session_id=session)
    async with env.dispatcher([b, a]) as cycle:
        report = await cycle()
    assert report.outcomes == {DISPATCHED: 1}
    (dm,) = await a.dms()
    assert dm.content.startswith(HANDOFF_DM_VERSION + "\n")
    assert dm.sender_hex == env.identity.public_hex
    parsed = parse_handoff_dm(dm.content)
    assert (parsed.dispute_id, parsed.session_id, parsed.trigger) == ("d-2", session, "round_limit")
    assert env.deliver.calls == [a.pubkey]
    assert b.received() == []
    dispatch_id = assert_dispatch(
        env, handoff_id, dispute_id="d-2", session_id=session, targets=[a.pubkey]
    )
    assert [e["dispatch_id"] for e in env.writer.audit("escalation_dispatched")] == [dispatch_id]


async def test_as3_no_assignee_broadcasts_to_write_solvers_in_config_order(env: RelayEnv) -> None:
    a, r, b = env.solver(), env.solver("read"), env.solver()
    session = open_dispute(env, "d-3")
    handoff_id = env.writer.add_handoff(package("d-3", session), session_id=session)
    async with env.dispatcher([a, r, b]) as cycle:
        await cycle()
    (dm_a,), (dm_b,) = await a.dms(), await b.dms()
    assert dm_a.content == dm_b.content
    assert env.deliver.calls == [a.pubkey, b.pubkey]
    assert r.received() == []
    assert_dispatch(
        env, handoff_id, dispute_id="d-3", session_id=session, targets=[a.pubkey, b.pubkey]
    )


async def test_as4_read_assignee_is_ignored(env: RelayEnv) -> None:
    r, w = env.solver("read"), env.solver()
    session = open_dispute(env, "d-4", assigned=r.pubkey)
    handoff_id = env.writer.add_handoff(package("d-4", session), session_id=session)
    async with env.dispatcher([r, w]) as cycle:
        await cycle()
    await w.dms()
    assert env.deliver.calls == [w.pubkey]
    assert r.received() == []
    assert_dispatch(env, handoff_id, dispute_id="d-4", session_id=session, targets=[w.pubkey])


async def test_as5_dispute_scoped_handoff(env: RelayEnv) -> None:
    w = env.solver()
    env.writer.add_dispute("d-5")
    handoff_id = env.writer.add_handoff(package("d-5"), session_id=None, pins=(None, None))
    async with env.dispatcher([w]) as cycle:
        await cycle()
    (dm,) = await w.dms()
    lines = dm.content.split("\n")
    assert lines[2] == "Session: " + NO_SESSION_MARKER
    assert "session_id" not in json.loads(lines[8])
    rows = env.writer.dispatches()
    assert rows[0][2] is None
    (audit,) = env.writer.rows(
        "SELECT session_id, prompt_bundle_id, policy_hash FROM mediation_events"
        " WHERE kind = 'escalation_dispatched'"
    )
    assert audit == (None, None, None)
    assert rows[0][3] == handoff_id


async def test_as23_the_received_body_is_the_contract(env: RelayEnv) -> None:
    w = env.solver()
    session = open_dispute(env, "d-23")
    payload = package("d-23", session, trigger="fraud_indicator", extra_key="dropped")
    env.writer.add_handoff(payload, session_id=session)
    async with env.dispatcher([w]) as cycle:
        await cycle()
    (dm,) = await w.dms()
    expected_package = decode_handoff_package(payload)
    assert dm.content == render_handoff_dm(expected_package)
    lines = dm.content.split("\n")
    assert len(lines) == 9
    template = [
        HANDOFF_DM_VERSION,
        "Dispute: d-23",
        f"Session: {session}",
        "Trigger: fraud_indicator",
        "",
        lines[5],
        "",
        HANDOFF_JSON_LABEL,
        lines[8],
    ]
    assert lines == template
    for element in (
        "d-23",
        "fraud_indicator",
        "TakeDispute",
        "Serbero's mediation assistance system",
    ):
        assert element in lines[5]
    assert parse_handoff_dm(dm.content).package == expected_package
    assert json.loads(lines[8])["rationale_refs"] == ["ab" * 32]
    assert "extra_key" not in lines[8]


async def test_as6_reconciliation_is_empty_after_dispatches(env: RelayEnv) -> None:
    w, bad = env.solver(), env.malformed_solver()
    for dispute_id in ("d-6a", "d-6b"):
        env.writer.add_dispute(dispute_id)
        env.writer.add_handoff(package(dispute_id))
    async with env.dispatcher([w]) as cycle:
        await cycle()
    env.writer.add_dispute("d-6c")
    env.writer.add_handoff(package("d-6c"))
    async with env.dispatcher([bad]) as cycle:
        await cycle()
    await w.dms(2)
    assert [r[7] for r in env.writer.dispatches()] == ["dispatched", "dispatched", "send_failed"]
    assert env.writer.rows(RECIPE_RECONCILIATION) == []


async def test_as7_two_cycles_one_dm(env: RelayEnv) -> None:
    w = env.solver()
    session = open_dispute(env, "d-7")
    env.writer.add_handoff(package("d-7", session), session_id=session)
    async with env.dispatcher([w]) as cycle:
        first = await cycle()
        second = await cycle()
    assert (first.examined, second.examined) == (1, 0)
    await w.dms()
    assert env.deliver.calls == [w.pubkey]
    assert len(env.writer.dispatches()) == 1
    assert len(env.writer.audit("escalation_dispatched")) == 1


# --- supersession --------------------------------------------------------------------------


async def test_as8_resolved_dispute_is_superseded(env: RelayEnv) -> None:
    w = env.solver()
    env.writer.add_dispute("d-8", state="resolved")
    env.writer.add_session("s-8", "d-8")
    handoff_id = env.writer.add_handoff(package("d-8", "s-8"), session_id="s-8")
    async with env.dispatcher([w]) as cycle:
        report = await cycle()
    assert report.outcomes == {HandoffOutcome.SUPERSEDED: 1}
    assert env.deliver.calls == []
    no_escalation_rows(env)
    assert env.writer.audit("escalation_superseded") == [
        {"dispute_id": "d-8", "handoff_event_id": handoff_id, "reason": "dispute_already_resolved"}
    ]


async def test_as9_resolution_after_dispatch_writes_nothing_more(env: RelayEnv) -> None:
    w = env.solver()
    session = open_dispute(env, "d-9")
    env.writer.add_handoff(package("d-9", session), session_id=session)
    async with env.dispatcher([w]) as cycle:
        await cycle()
        before = env.writer.count("mediation_events")
        env.writer.set_state("d-9", "resolved")
        report = await cycle()
    assert report.examined == 0
    assert env.writer.count("mediation_events") == before
    assert env.writer.audit("escalation_superseded") == []
    assert len(env.writer.dispatches()) == 1
    await w.dms()


async def test_as10_superseded_then_reopened_is_dispatched(env: RelayEnv) -> None:
    w = env.solver()
    env.writer.add_dispute("d-10", state="resolved")
    handoff_id = env.writer.add_handoff(package("d-10"))
    async with env.dispatcher([w]) as cycle:
        await cycle()
        await cycle()
        assert env.deliver.calls == []
        assert len(env.writer.audit("escalation_superseded")) == 1
        env.writer.set_state("d-10", "notified")
        report = await cycle()
    assert report.outcomes == {DISPATCHED: 1}
    (dm,) = await w.dms()
    assert parse_handoff_dm(dm.content).dispute_id == "d-10"
    assert len(env.writer.audit("escalation_superseded")) == 1
    assert_dispatch(env, handoff_id, dispute_id="d-10", session_id=None, targets=[w.pubkey])


# --- unroutable and fallback ---------------------------------------------------------------


async def test_as11_read_only_without_fallback_is_unroutable_once(env: RelayEnv) -> None:
    r1, r2 = env.solver("read"), env.solver("read")
    env.writer.add_dispute("d-11")
    handoff_id = env.writer.add_handoff(package("d-11"))
    async with env.dispatcher([r1, r2]) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.UNROUTABLE: 1}
        assert (await cycle()).outcomes == {HandoffOutcome.UNROUTABLE: 1}
    assert env.deliver.calls == []
    no_escalation_rows(env)
    assert env.writer.audit("escalation_dispatch_unroutable") == [
        {
            "configured_solver_count": 2,
            "dispute_id": "d-11",
            "fallback_to_all_solvers": False,
            "handoff_event_id": handoff_id,
        }
    ]


async def test_as12_read_only_with_fallback_reaches_everyone(env: RelayEnv) -> None:
    r1, r2 = env.solver("read"), env.solver("read")
    session = open_dispute(env, "d-12")
    handoff_id = env.writer.add_handoff(package("d-12", session), session_id=session)
    async with env.dispatcher([r1, r2], fallback=True) as cycle:
        await cycle()
    await r1.dms()
    await r2.dms()
    assert_dispatch(
        env,
        handoff_id,
        dispute_id="d-12",
        session_id=session,
        targets=[r1.pubkey, r2.pubkey],
        fallback=True,
    )
    assert env.writer.audit("escalation_dispatch_unroutable") == []


async def test_as13_no_solvers_with_fallback_is_unroutable(env: RelayEnv) -> None:
    env.writer.add_dispute("d-13")
    handoff_id = env.writer.add_handoff(package("d-13"))
    async with env.dispatcher([], fallback=True) as cycle:
        await cycle()
    no_escalation_rows(env)
    assert env.writer.audit("escalation_dispatch_unroutable") == [
        {
            "configured_solver_count": 0,
            "dispute_id": "d-13",
            "fallback_to_all_solvers": False,
            "handoff_event_id": handoff_id,
        }
    ]


async def test_as14_adding_a_write_solver_after_restart_dispatches(env: RelayEnv) -> None:
    r, w = env.solver("read"), env.solver()
    env.writer.add_dispute("d-14")
    handoff_id = env.writer.add_handoff(package("d-14"))
    async with env.dispatcher([r]) as cycle:
        await cycle()
    assert len(env.writer.audit("escalation_dispatch_unroutable")) == 1
    async with env.dispatcher([r, w]) as cycle:
        await cycle()
    await w.dms()
    assert r.received() == []
    assert_dispatch(env, handoff_id, dispute_id="d-14", session_id=None, targets=[w.pubkey])
    assert len(env.writer.audit("escalation_dispatch_unroutable")) == 1


# --- failures ------------------------------------------------------------------------------


async def test_as15_malformed_only_write_solver_is_send_failed(env: RelayEnv) -> None:
    bad = env.malformed_solver("npub1qqqq-not-a-key")
    env.writer.add_dispute("d-15")
    handoff_id = env.writer.add_handoff(package("d-15"))
    async with env.dispatcher([bad]) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.SEND_FAILED: 1}
        before = (env.writer.count("mediation_events"), env.writer.count("notifications"))
        assert (await cycle()).examined == 0
    assert_dispatch(
        env,
        handoff_id,
        dispute_id="d-15",
        session_id=None,
        targets=["npub1qqqq-not-a-key"],
        status="send_failed",
        failed=("npub1qqqq-not-a-key",),
    )
    ((error,),) = env.writer.rows("SELECT error_message FROM notifications")
    assert error.startswith("invalid pubkey: ")
    assert (env.writer.count("mediation_events"), env.writer.count("notifications")) == before


async def test_as16_partial_success_keeps_attempt_order(env: RelayEnv) -> None:
    bad, b = env.malformed_solver("A-not-a-key"), env.solver()
    env.writer.add_dispute("d-16")
    handoff_id = env.writer.add_handoff(package("d-16"))
    async with env.dispatcher([bad, b]) as cycle:
        assert (await cycle()).outcomes == {DISPATCHED: 1}
    await b.dms()
    assert_dispatch(
        env,
        handoff_id,
        dispute_id="d-16",
        session_id=None,
        targets=["A-not-a-key", b.pubkey],
        failed=("A-not-a-key",),
    )


# --- parse failures ------------------------------------------------------------------------


def parse_failed_rows(env: RelayEnv) -> list[dict[str, Any]]:
    return env.writer.audit("escalation_dispatch_parse_failed")


async def test_as17_missing_keys_is_deserialize_failed(env: RelayEnv) -> None:
    w = env.solver()
    handoff_id = env.writer.add_handoff('{"dispute_id":"d-malformed","trigger":"round_limit"}')
    async with env.dispatcher([w]) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.DESERIALIZE_FAILED: 1}
        assert (await cycle()).examined == 0
    (row,) = parse_failed_rows(env)
    assert row["detail"]
    assert {k: v for k, v in row.items() if k != "detail"} == {
        "dispute_id": "d-malformed",
        "handoff_event_id": handoff_id,
        "reason": "deserialize_failed",
    }
    assert env.deliver.calls == []
    no_escalation_rows(env)


async def test_as18_not_json_has_unknown_dispute(env: RelayEnv) -> None:
    handoff_id = env.writer.add_handoff("this is not json at all {{{")
    async with env.dispatcher([env.solver()]) as cycle:
        await cycle()
    (row,) = parse_failed_rows(env)
    assert (row["dispute_id"], row["handoff_event_id"], row["reason"]) == (
        "unknown",
        handoff_id,
        "deserialize_failed",
    )
    no_escalation_rows(env)


async def test_as19_orphan_dispute_reference(env: RelayEnv) -> None:
    handoff_id = env.writer.add_handoff(package("d-ghost"))
    async with env.dispatcher([env.solver()]) as cycle:
        assert (await cycle()).outcomes == {HandoffOutcome.ORPHAN: 1}
        assert (await cycle()).examined == 0
    assert parse_failed_rows(env) == [
        {
            "detail": "dispute_id not found",
            "dispute_id": "d-ghost",
            "handoff_event_id": handoff_id,
            "reason": "orphan_dispute_reference",
        }
    ]
    assert env.deliver.calls == []


async def test_as19_empty_dispute_id_is_an_orphan(env: RelayEnv) -> None:
    env.writer.add_handoff(package(""))
    async with env.dispatcher([env.solver()]) as cycle:
        await cycle()
    (row,) = parse_failed_rows(env)
    assert (row["dispute_id"], row["reason"]) == ("", "orphan_dispute_reference")


async def test_bey21_forged_header_line_is_deserialize_failed(env: RelayEnv) -> None:
    env.writer.add_dispute("d-21")
    env.writer.add_handoff(package("d-21", trigger="x\nDispute: d-other"))
    async with env.dispatcher([env.solver()]) as cycle:
        await cycle()
    (row,) = parse_failed_rows(env)
    assert (row["dispute_id"], row["reason"]) == ("d-21", "deserialize_failed")
    assert env.deliver.calls == []


async def test_as20_malformed_and_valid_in_one_batch(env: RelayEnv) -> None:
    w = env.solver()
    env.writer.add_dispute("d-20")
    bad_id = env.writer.add_handoff('{"dispute_id": 7}')
    good_id = env.writer.add_handoff(package("d-20"))
    async with env.dispatcher([w]) as cycle:
        report = await cycle()
        assert report.outcomes == {HandoffOutcome.DESERIALIZE_FAILED: 1, DISPATCHED: 1}
        before = env.writer.count("mediation_events")
        assert (await cycle()).examined == 0
    assert env.writer.count("mediation_events") == before
    (row,) = parse_failed_rows(env)
    assert (row["handoff_event_id"], row["dispute_id"]) == (bad_id, "unknown")
    await w.dms()
    assert_dispatch(env, good_id, dispute_id="d-20", session_id=None, targets=[w.pubkey])


# --- no starvation -------------------------------------------------------------------------


async def test_as24_resolved_backlog_does_not_starve_a_new_handoff(env: RelayEnv) -> None:
    w = env.solver()
    for n in range(130):
        env.writer.add_dispute(f"old-{n}", state="resolved")
        env.writer.add_handoff(package(f"old-{n}"))
    env.writer.add_dispute("d-new")
    new_id = env.writer.add_handoff(package("d-new"))
    async with env.dispatcher([w]) as cycle:
        report = await cycle()
    assert report.pages == 2
    assert report.outcomes == {HandoffOutcome.SUPERSEDED: 130, DISPATCHED: 1}
    (dm,) = await w.dms()
    assert parse_handoff_dm(dm.content).dispute_id == "d-new"
    assert_dispatch(env, new_id, dispute_id="d-new", session_id=None, targets=[w.pubkey])
    assert len(env.writer.audit("escalation_superseded")) == 130


@pytest.mark.parametrize("state", ["new", "taken", "waiting", "escalated", "on-hold"])
async def test_every_state_but_resolved_routes(env: RelayEnv, state: str) -> None:
    # Only the exact string `resolved` supersedes.
    w = env.solver()
    env.writer.add_dispute("d-state", state=state)
    env.writer.add_handoff(package("d-state"))
    async with env.dispatcher([w]) as cycle:
        assert (await cycle()).outcomes == {DISPATCHED: 1}
    await w.dms()


async def test_two_handoffs_for_one_dispute_are_two_dispatches(env: RelayEnv) -> None:
    # ESC-39: no cross-handoff dedup.
    w = env.solver()
    env.writer.add_dispute("d-twice")
    first = env.writer.add_handoff(package("d-twice"))
    second = env.writer.add_handoff(package("d-twice", trigger="mediation_timeout"))
    async with env.dispatcher([w]) as cycle:
        await cycle()
    dms = await w.dms(2)
    assert sorted(parse_handoff_dm(dm.content).trigger for dm in dms) == [
        "mediation_timeout",
        "round_limit",
    ]
    assert [r[3] for r in env.writer.dispatches()] == [first, second]
