"""The reference's operator SQL recipes for the dispatcher, run with stdlib sqlite3 against a
database the dispatcher wrote over a real relay, return the documented shapes (and
reconciliation returns nothing)."""

from __future__ import annotations

from tests.escalation.conftest import RelayEnv
from tests.escalation.helpers import (
    RECIPE_ADMIN_ACTIONS,
    RECIPE_DISPUTE_EVENTS,
    RECIPE_FAILED_RECIPIENTS,
    RECIPE_FOLLOWED,
    RECIPE_LATEST,
    RECIPE_PARSE_FAILURES,
    RECIPE_RECONCILIATION,
    RECIPE_SEND_FAILED,
    RECIPE_SKIPPED,
    RECIPE_STRANDED,
    package,
)
from tests.support.clocks import FakeWallClock

ESCALATION_COLUMNS = 9


async def test_recipes_over_a_dispatcher_made_database(env: RelayEnv) -> None:
    clock = FakeWallClock()
    reader, writer_solver = env.solver("read"), env.solver()
    bad = env.malformed_solver("not-a-key")
    w = env.writer
    w.add_dispute("d-open")
    w.add_session("s-open", "d-open")
    w.add_dispute("d-res", state="resolved")
    w.add_dispute("d-sf")
    stranded = w.add_handoff(package("d-open", "s-open"), session_id="s-open")
    broken = w.add_handoff("{{{")
    skipped = w.add_handoff(package("d-res"))
    async with env.dispatcher([reader], wall_clock=clock) as cycle:
        await cycle()
    clock.advance(60)
    orphan = w.add_handoff(package("d-gone"))
    async with env.dispatcher([writer_solver, bad], wall_clock=clock) as cycle:
        await cycle()
    await writer_solver.dms()
    clock.advance(60)
    failing = w.add_handoff(package("d-sf"))
    async with env.dispatcher([bad], wall_clock=clock) as cycle:
        await cycle()

    (send_failed,) = w.rows(RECIPE_SEND_FAILED)
    assert len(send_failed) == ESCALATION_COLUMNS
    assert (send_failed[1], send_failed[3], send_failed[7]) == ("d-sf", failing, "send_failed")

    followed = w.rows(RECIPE_FOLLOWED)
    assert [kind for kind, _, _ in followed] == [
        "escalation_dispatched",
        "handoff_prepared",
        "escalation_dispatched",
        "handoff_prepared",
    ]
    assert all(len(prefix) <= 80 and isinstance(at, int) for _, prefix, at in followed)

    latest = w.rows(RECIPE_LATEST)
    assert [(r[1], r[2], r[3], r[4]) for r in latest] == [
        ("d-sf", "not-a-key", "send_failed", 0),
        ("d-open", f"{writer_solver.pubkey},not-a-key", "dispatched", 0),
    ]

    (stranded_row,) = w.rows(RECIPE_STRANDED)
    assert isinstance(stranded_row[1], int) and stranded_row[2] == "d-open"
    (skipped_row,) = w.rows(RECIPE_SKIPPED)
    assert isinstance(skipped_row[1], int) and skipped_row[2] == "d-res"
    handoff_of = (
        "SELECT json_extract(payload_json, '$.handoff_event_id') FROM mediation_events WHERE id = ?"
    )
    assert [w.one(handoff_of, (row[0],)) for row in (stranded_row, skipped_row)] == [
        stranded,
        skipped,
    ]

    parse_failures = w.rows(RECIPE_PARSE_FAILURES)
    # Ordered by occurred_at (the tracker's clock), which may tie within a second.
    assert sorted((w.one(handoff_of, (r[0],)), r[2], bool(r[3])) for r in parse_failures) == [
        (broken, "deserialize_failed", True),
        (orphan, "orphan_dispute_reference", True),
    ]

    assert w.rows(RECIPE_FAILED_RECIPIENTS) == [(1,)]
    assert [kind for _, kind, _, _ in w.rows(RECIPE_DISPUTE_EVENTS, ("d-open",))] == [
        "escalation_dispatch_unroutable",
        "escalation_dispatched",
    ]
    assert w.rows(RECIPE_RECONCILIATION) == []
    assert w.rows(RECIPE_ADMIN_ACTIONS) == [(0,)]
