"""External resolution of mediated disputes through the daemon's ingest on a real relay
(§14, MAS-19, MAS-20) and a human solver taking a live mediation over (Q-6, BEY-18): the
session superseded and closed, the solvers' `mediation_resolution_report/v1` once, also
after a restart and a replay of the relay's events.

The mediation rows are what the engine would have left in the database; the dispute events
come from the Mostro simulator and the reports are read by the solvers' nostr-sdk inboxes.
"""

from __future__ import annotations

import json
from pathlib import Path

import apsw
import pytest
import trio

from tests.daemon.support import Harness, in_thread, query, running_daemon
from tests.support.relay_fixtures import LocalRelayProcess

REPORT = "mediation_resolution_report/v1"


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "serbero.db")


def _seed(
    db_path: str,
    dispute_id: str,
    *,
    state: str | None = "awaiting_response",
    outbound: tuple[str, ...] = (),
    inbound: tuple[str, ...] = (),
    confidence: float | None = None,
    verdict_confidence: float | None = None,
    escalated: bool = False,
) -> None:
    """The engine's rows for `dispute_id`: a session `s-<dispute>` in `state` (none when
    None) with messages and a classification, or only a dispute-scoped verdict."""
    session_id = f"s-{dispute_id}"
    conn = apsw.Connection(db_path)
    conn.set_busy_timeout(5000)

    def event(session: str | None, kind: str, payload: dict[str, object]) -> None:
        conn.execute(
            "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
            " VALUES (?, ?, ?, 1)",
            (session, kind, json.dumps(payload)),
        )

    try:
        with conn:
            if state is not None:
                conn.execute(
                    "INSERT INTO mediation_sessions (session_id, dispute_id, state,"
                    " prompt_bundle_id, policy_hash, started_at, last_transition_at)"
                    " VALUES (?, ?, ?, 'phase3-default', 'hash', 1, 1)",
                    (session_id, dispute_id, state),
                )
            messages = [("outbound", p) for p in outbound] + [("inbound", p) for p in inbound]
            for index, (direction, party) in enumerate(messages):
                conn.execute(
                    "INSERT INTO mediation_messages (session_id, direction, party,"
                    " shared_pubkey, inner_event_id, inner_event_created_at, content,"
                    " persisted_at) VALUES (?, ?, ?, ?, ?, 1, 'chat text', 1)",
                    (session_id, direction, party, "ab" * 32, f"inner-{index}"),
                )
            if confidence is not None:
                event(
                    session_id,
                    "classification_produced",
                    {"classification": "coordination_failure_resolvable", "confidence": confidence},
                )
            if verdict_confidence is not None:
                event(
                    None,
                    "reasoning_verdict",
                    {
                        "dispute_id": dispute_id,
                        "decision": "summarize",
                        "classification": "coordination_failure_resolvable",
                        "confidence": verdict_confidence,
                    },
                )
            if escalated:
                event(session_id, "escalation_recommended", {"dispute_id": dispute_id})
                event(session_id, "handoff_prepared", {"dispute_id": dispute_id})
    finally:
        conn.close()


def _kinds(db_path: str, dispute_id: str) -> list[str]:
    return [
        str(row[0])
        for row in query(
            db_path,
            "SELECT kind FROM mediation_events WHERE session_id = ?"
            " OR json_extract(payload_json, '$.dispute_id') = ? ORDER BY id",
            (f"s-{dispute_id}", dispute_id),
        )
    ]


def _report_lines(content: str) -> list[str]:
    return content.split("\n")[1:6]


async def test_mas19_reports_say_what_mediation_had_done(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """MAS-19: a live session (2 out, 2 in, 0.88), a buyer-only session without a
    classification, an escalated session, a verdict without a session, and a dispute with
    no mediation context, all settled; then every resolution is replayed."""
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            disputes = ["d-live", "d-buyer", "d-escalated", "d-verdict", "d-none"]
            for dispute_id in disputes:
                await in_thread(h.sim.open_dispute, dispute_id, "buyer")
            await h.settled(context, len(disputes))
            _seed(
                db_path,
                "d-live",
                outbound=("buyer", "seller"),
                inbound=("buyer", "seller"),
                confidence=0.88,
            )
            _seed(db_path, "d-buyer", outbound=("buyer",))
            _seed(db_path, "d-escalated", state="escalation_recommended", escalated=True)
            _seed(db_path, "d-verdict", state=None, verdict_confidence=0.95)
            for dispute_id in disputes:
                await in_thread(h.sim.resolve, dispute_id, "settled")
            inboxes = await h.wait_dms(4, REPORT)
            await h.settled(context, 2 * len(disputes))
        # A restart: the relay hands every dispute's latest event over again.
        async with running_daemon(h.config) as context:
            await h.settled(context, len(disputes))
            await trio.sleep(0.5)
        for dms in inboxes:
            reports = {_report_lines(dm.content)[0]: dm.content for dm in dms}
            assert len(dms) == 4 and "Dispute: d-none" not in reports
            live = reports["Dispute: d-live"]
            assert live.startswith(REPORT + "\n")
            assert _report_lines(live) == [
                "Dispute: d-live",
                "Session: s-d-live",
                "Classification: coordination_failure_resolvable (confidence 0.88)",
                "Outbound party messages: 2",
                "Final dispute status: settled",
            ]
            assert _report_lines(reports["Dispute: d-buyer"])[2:4] == [
                "Classification: <none recorded>",
                "Outbound party messages: 1",
            ]
            assert "escalation_recommended" in reports["Dispute: d-escalated"]
            assert _report_lines(reports["Dispute: d-verdict"])[1:4] == [
                "Session: <none — dispute-scoped handoff>",
                "Classification: coordination_failure_resolvable (confidence 0.95)",
                "Outbound party messages: 0",
            ]
        # Each solver: five new-dispute and five closing notices, and four reports.
        assert h.dm_counts() == [len(disputes) * 2 + 4] * 2
        assert h.state("d-none") == "resolved"
        for dispute_id in ("d-live", "d-buyer", "d-escalated", "d-verdict"):
            assert _kinds(db_path, dispute_id).count("resolved_externally_reported") == 1
        assert _kinds(db_path, "d-none") == []
        # MAS-20: the escalated session keeps its state and its one handoff.
        assert query(
            db_path, "SELECT state FROM mediation_sessions WHERE session_id = 's-d-escalated'"
        ) == [("escalation_recommended",)]
        assert _kinds(db_path, "d-escalated").count("handoff_prepared") == 1
        assert "superseded_by_human" not in _kinds(db_path, "d-escalated")
        assert (
            h.rows(
                "notifications", "notif_type = 'mediation_resolution_report' AND status = 'sent'"
            )
            == 8
        )


async def test_mas20_released_on_a_taken_dispute_supersedes_the_session(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """MAS-20: `released` after Serbero's own take: the session closes as superseded, the
    lifecycle is `resolved`, and the report goes out."""
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-taken", "seller")
            await in_thread(h.sim.take_dispute, "d-taken", h.serbero.public_hex)
            await h.settled(context, 2)
            _seed(db_path, "d-taken", outbound=("buyer", "seller"), confidence=0.7)
            await in_thread(h.sim.resolve, "d-taken", "released")
            [[report]] = await h.wait_dms(1, REPORT)
            await h.settled(context, 3)
        assert "Final dispute status: released" in report.content
        assert h.state("d-taken") == "resolved"
        assert query(db_path, "SELECT state FROM mediation_sessions") == [("closed",)]
        superseded = query(
            db_path,
            "SELECT payload_json FROM mediation_events WHERE kind = 'superseded_by_human'",
        )
        assert [json.loads(str(row[0]))["resolution_status"] for row in superseded] == ["released"]
        assert _kinds(db_path, "d-taken").count("session_closed") == 1


async def test_q6_a_human_taking_the_dispute_supersedes_the_session_once(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """Q-6 / BEY-18: Serbero took the dispute; a human solver taking it over closes the
    live session and sends the report once. The later settlement, a restart and the relay
    replaying every event send no second report."""
    human = "f" * 64
    async with Harness(local_relay.url, db_path) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-human", "buyer")
            await in_thread(h.sim.take_dispute, "d-human", h.serbero.public_hex)
            await h.settled(context, 2)
            _seed(db_path, "d-human", outbound=("buyer", "seller"), confidence=0.6)
            await in_thread(h.sim.take_dispute, "d-human", human)
            for dms in await h.wait_dms(1, REPORT):
                assert _report_lines(dms[-1].content) == [
                    "Dispute: d-human",
                    "Session: s-d-human",
                    "Classification: coordination_failure_resolvable (confidence 0.60)",
                    "Outbound party messages: 2",
                    "Final dispute status: in-progress",
                ]
                assert "human solver took the dispute over" in dms[-1].content
            await h.settled(context, 3)
            assert query(db_path, "SELECT state FROM mediation_sessions") == [("closed",)]
            await in_thread(h.sim.resolve, "d-human", "settled")
            await h.wait_dms(1, "lifecycle_state: resolved")
            await h.settled(context, 4)
        # A restart replays the relay's events from the stored cursor's look-back.
        async with running_daemon(h.config) as context:
            await h.settled(context, 1)
            await trio.sleep(0.5)
        assert [inbox.count_containing(REPORT) for inbox in h.inboxes] == [1, 1]
        kinds = _kinds(db_path, "d-human")
        assert kinds.count("superseded_by_human") == 1
        assert kinds.count("resolved_externally_reported") == 1
        [(payload,)] = query(
            db_path, "SELECT payload_json FROM mediation_events WHERE kind = 'session_closed'"
        )
        assert json.loads(str(payload))["reason"] == "dispute_taken_by_human"
        assert h.state("d-human") == "resolved"


async def test_q6_serbero_taking_the_dispute_supersedes_nothing(
    local_relay: LocalRelayProcess, db_path: str
) -> None:
    """Serbero's own take (or one naming no solver) leaves the live session alone."""
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.open_dispute, "d-own", "buyer")
            await h.settled(context, 1)
            _seed(db_path, "d-own", outbound=("buyer",))
            await in_thread(h.sim.take_dispute, "d-own", h.serbero.public_hex)
            await in_thread(h.sim.take_dispute, "d-own")
            await h.settled(context, 3)
            await trio.sleep(0.3)
        assert query(db_path, "SELECT state FROM mediation_sessions") == [("awaiting_response",)]
        assert [inbox.count_containing(REPORT) for inbox in h.inboxes] == [0]
