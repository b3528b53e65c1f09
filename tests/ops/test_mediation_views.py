"""The mediation part of `serbero status` and `serbero show` (issue 17 item 6, MED-172).

The database is a real SQLite file filled through the store's own writers, the way the
engine fills it: one dispute mediated to a delivered summary, one escalated on conflicting
claims and dispatched, one escalated before any take, one still live and one superseded by
the parties' own settlement. Every rationale text, chat message, summary text and DM body
holds a marker string, and every party key (shared and trade) is a fresh random key: none
of them may appear in any output of any command, as text (piped or on a terminal) or JSON.
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import apsw
import pytest

from serbero.cli import main
from serbero.protocol.keys import Keys
from serbero.store.audit import insert_event
from serbero.store.chat import (
    InboundEnvelope,
    OutboundMessage,
    OutboundRound,
    ingest_inbound,
    record_outbound_round,
)
from serbero.store.connection import open_database
from serbero.store.disputes import record_detected
from serbero.store.escalate import SessionEscalation, recommend_session_escalation
from serbero.store.escalation import RecipientOutcome, pending_handoffs_page, record_dispatch
from serbero.store.notifications import NotifType
from serbero.store.outbox import OutboxMessage, claim_due, complete, enqueue
from serbero.store.rationale import RationaleOccurrence, store_rationale
from serbero.store.resolution import assign_dispute, resolve_dispute
from serbero.store.rounds import record_classification
from serbero.store.sessions import (
    NewSession,
    TakeOutcome,
    Verdict,
    begin_start_attempt,
    bind_rationale,
    open_session,
    recommend_dispute_escalation,
    record_policy_escalate,
    record_take,
    record_verdict,
)
from serbero.store.transaction import transaction
from tests.ops.seed import dispute_event

SOLVERS: Final = ("a1" * 32, "b2" * 32)
BUNDLE: Final = "phase3-default"
HASH: Final = "f" * 64
MARKER: Final = "MARKER-must-never-be-shown"
# A key shown shortened on a terminal keeps its first 8 characters; any longer run of a
# party key in the output is a leak too.
KEY_WINDOW: Final = 12

SUMMARIZED: Final = str(uuid.UUID(int=1))
ESCALATED: Final = str(uuid.UUID(int=2))
BEFORE_TAKE: Final = str(uuid.UUID(int=3))
LIVE: Final = str(uuid.UUID(int=4))
SUPERSEDED: Final = str(uuid.UUID(int=5))
ECHOED: Final = str(uuid.UUID(int=6))
TAKEN_OVER: Final = str(uuid.UUID(int=7))
DISPUTES: Final = (SUMMARIZED, ESCALATED, BEFORE_TAKE, LIVE, SUPERSEDED, ECHOED, TAKEN_OVER)
SERBERO: Final = "5e" * 32


class Seeded:
    """What the seed wrote that a test needs back: session ids and every secret."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}
        self.keys: list[str] = []
        self.texts: list[str] = []
        # Per dispute: its trade keys and the parties' answers.
        self.trade_keys: dict[str, tuple[str, str]] = {}
        self.answers: dict[str, list[str]] = {}

    def key(self) -> str:
        key = Keys.generate().public_hex
        self.keys.append(key)
        return key

    def text(self, what: str) -> str:
        text = f"{what} {MARKER} {len(self.texts)}"
        self.texts.append(text)
        return text


def _deliver(conn: apsw.Connection, now: int) -> None:
    for row in claim_due(conn, now, 100).rows:
        complete(conn, row.id, ok=True, error=None, retry=False, now=now)


def _occurrence(seeded: Seeded, dispute_id: str, session_id: str | None) -> RationaleOccurrence:
    return RationaleOccurrence(
        text=seeded.text(f"rationale for {dispute_id}"),
        purpose="classification",
        dispute_id=dispute_id,
        session_id=session_id,
        provider="openai",
        model="scripted",
        prompt_bundle_id=BUNDLE,
        policy_hash=HASH,
    )


def _rationale(
    conn: apsw.Connection, seeded: Seeded, dispute_id: str, session_id: str | None, now: int
) -> str:
    return store_rationale(conn, _occurrence(seeded, dispute_id, session_id), now).rationale_id


def _open(conn: apsw.Connection, seeded: Seeded, dispute_id: str, now: int) -> str:
    """Detection, verdict (ask), take, session, bound open rationale, opening round and
    one answer from each party: the open procedure's writes in MED-50 order."""
    record_detected(
        conn,
        dispute_event(dispute_id, "initiated", now - 5),
        [OutboxMessage(s, seeded.text("initial DM")) for s in SOLVERS],
        now,
    )
    _deliver(conn, now)
    assert begin_start_attempt(conn, dispute_id, "detected", now + 1)
    stored = _rationale(conn, seeded, dispute_id, None, now + 1)
    record_verdict(conn, dispute_id, Verdict(decision="ask_clarification"), BUNDLE, HASH, now + 1)
    record_take(conn, dispute_id, TakeOutcome(succeeded=True), BUNDLE, HASH, now + 2)
    session_id = str(uuid.uuid4())
    shared = {party: seeded.key() for party in ("buyer", "seller")}
    seeded.trade_keys[dispute_id] = (seeded.key(), seeded.key())
    open_session(
        conn,
        session_id,
        NewSession(
            dispute_id=dispute_id,
            prompt_bundle_id=BUNDLE,
            policy_hash=HASH,
            buyer_shared_pubkey=shared["buyer"],
            seller_shared_pubkey=shared["seller"],
            buyer_trade_pubkey=seeded.trade_keys[dispute_id][0],
            seller_trade_pubkey=seeded.trade_keys[dispute_id][1],
        ),
        now + 2,
    )
    bind_rationale(
        conn,
        session_id,
        classification="unclear",
        confidence=0.4,
        rationale_id=stored,
        occurrence_id=None,
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=now + 2,
    )

    def outbound(party: str) -> OutboundMessage:
        return OutboundMessage(
            party,  # type: ignore[arg-type]
            shared[party],
            uuid.uuid4().hex * 2,
            now + 3,
            uuid.uuid4().hex * 2,
            seeded.text(f"question to the {party}"),
            json.dumps({"tags": [["p", shared[party]]], "content": seeded.text("wrap")}),
        )

    record_outbound_round(
        conn, OutboundRound(session_id, outbound("buyer"), outbound("seller")), now + 3
    )
    for offset, party in enumerate(("buyer", "seller")):
        answer = seeded.text(f"answer of the {party}")
        seeded.answers.setdefault(dispute_id, []).append(answer)
        ingest_inbound(
            conn,
            session_id,
            InboundEnvelope(
                party=party,  # type: ignore[arg-type]
                shared_pubkey=shared[party],
                inner_event_id=uuid.uuid4().hex * 2,
                inner_created_at=now + 10 + offset,
                outer_event_id=uuid.uuid4().hex * 2,
                content=answer,
            ),
            now + 10 + offset,
        )
    seeded.sessions[dispute_id] = session_id
    return session_id


def _classify(
    conn: apsw.Connection,
    seeded: Seeded,
    dispute_id: str,
    session_id: str,
    label: str,
    confidence: float,
    now: int,
) -> str:
    """A follow-up classification as the rounds stage stores it (MED-93)."""
    recorded = record_classification(
        conn,
        session_id,
        _occurrence(seeded, dispute_id, session_id),
        classification=label,
        confidence=confidence,
        now=now,
    )
    return recorded.rationale_id


def _set_state(conn: apsw.Connection, session_id: str, state: str, now: int) -> None:
    with transaction(conn):
        conn.execute(
            "UPDATE mediation_sessions SET state = ?, last_transition_at = ? WHERE session_id = ?",
            (state, now, session_id),
        )


def _summarize(conn: apsw.Connection, seeded: Seeded, now: int) -> None:
    """SUMMARIZED: a round, Summarize, the summary stored and its DM sent to both solvers."""
    session_id = _open(conn, seeded, SUMMARIZED, now)
    stored = _classify(
        conn, seeded, SUMMARIZED, session_id, "coordination_failure_resolvable", 0.9, now + 20
    )
    _set_state(conn, session_id, "summary_pending", now + 21)
    summary = seeded.text("summary")
    with transaction(conn):
        conn.execute(
            "INSERT INTO mediation_summaries (session_id, dispute_id, classification,"
            " confidence, suggested_next_step, summary_text, prompt_bundle_id, policy_hash,"
            " rationale_id, generated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                SUMMARIZED,
                "coordination_failure_resolvable",
                0.9,
                seeded.text("next step"),
                summary,
                BUNDLE,
                HASH,
                stored,
                now + 22,
            ),
        )
        insert_event(
            conn,
            session_id=session_id,
            kind="summary_generated",
            payload={
                "classification": "coordination_failure_resolvable",
                "confidence": 0.9,
                "rationale_id": stored,
            },
            prompt_bundle_id=BUNDLE,
            policy_hash=HASH,
            occurred_at=now + 22,
            rationale_id=stored,
        )
        enqueue(
            conn,
            dispute_id=SUMMARIZED,
            notif_type=NotifType.MEDIATION_SUMMARY,
            cause=session_id,
            messages=[OutboxMessage(s, summary) for s in SOLVERS],
            now=now + 22,
        )
    _deliver(conn, now + 23)
    _set_state(conn, session_id, "closed", now + 23)


def _escalate(conn: apsw.Connection, seeded: Seeded, now: int) -> None:
    """ESCALATED: a round on conflicting claims, the session recommend and its dispatch."""
    session_id = _open(conn, seeded, ESCALATED, now)
    stored = _classify(conn, seeded, ESCALATED, session_id, "conflicting_claims", 0.8, now + 20)
    escalation = SessionEscalation(
        session_id=session_id,
        dispute_id=ESCALATED,
        trigger="conflicting_claims",
        rationale_refs=(stored,),
    )
    recommend_session_escalation(conn, escalation, SOLVERS, now + 20)
    _deliver(conn, now + 21)
    (handoff,) = pending_handoffs_page(conn)
    record_dispatch(
        conn,
        dispatch_id=str(uuid.uuid4()),
        handoff=handoff,
        dispute_id=ESCALATED,
        outcomes=(RecipientOutcome(solver_pubkey=SOLVERS[0], ok=True),),
        via_fallback=False,
        dispatched_at=now + 25,
    )


def _escalate_before_take(conn: apsw.Connection, seeded: Seeded, now: int) -> None:
    """BEFORE_TAKE: the open verdict says fraud: no take, a dispute-scoped handoff pending."""
    record_detected(
        conn,
        dispute_event(BEFORE_TAKE, "initiated", now - 5),
        [OutboxMessage(s, seeded.text("initial DM")) for s in SOLVERS],
        now,
    )
    assert begin_start_attempt(conn, BEFORE_TAKE, "detected", now + 1)
    stored = _rationale(conn, seeded, BEFORE_TAKE, None, now + 1)
    verdict = Verdict(decision="escalate", trigger="fraud_indicator")
    record_verdict(conn, BEFORE_TAKE, verdict, BUNDLE, HASH, now + 1)
    record_policy_escalate(conn, BEFORE_TAKE, "fraud_indicator", BUNDLE, HASH, now + 1)
    recommend_dispute_escalation(
        conn,
        BEFORE_TAKE,
        "fraud_indicator",
        rationale_refs=(stored,),
        bundle_id=BUNDLE,
        policy_hash=HASH,
        now=now + 1,
    )


def _echo_escalate(conn: apsw.Connection, seeded: Seeded, now: int) -> None:
    """ECHOED: a summary-path escalation (MED-124, through recommend: Q-5) whose reason is a
    provider's error text that echoed the prompt: a chat message, a trade key and a
    rationale (what Q-17 avoids, written here as a hostile or older row would be)."""
    session_id = _open(conn, seeded, ECHOED, now)
    stored = _classify(conn, seeded, ECHOED, session_id, "unclear", 0.3, now + 20)
    rationale = seeded.texts[-1]
    assert stored and MARKER in rationale
    echo = f"upstream 400: {seeded.answers[ECHOED][0]} {seeded.trade_keys[ECHOED][1]} {rationale}"
    escalation = SessionEscalation(
        session_id=session_id,
        dispute_id=ECHOED,
        trigger="reasoning_unavailable",
        reason=echo,
    )
    recommend_session_escalation(conn, escalation, SOLVERS, now + 21)


def seed(path: Path, now: int) -> Seeded:
    seeded = Seeded()
    conn, _ = open_database(str(path))
    try:
        _summarize(conn, seeded, now)
        _escalate(conn, seeded, now + 100)
        _escalate_before_take(conn, seeded, now + 200)
        _open(conn, seeded, LIVE, now + 300)
        _open(conn, seeded, SUPERSEDED, now + 400)
        settled = dispute_event(SUPERSEDED, "settled", now + 450)
        resolve_dispute(conn, settled, (), SOLVERS, now + 450)
        _echo_escalate(conn, seeded, now + 500)
        _open(conn, seeded, TAKEN_OVER, now + 600)
        taken = dispute_event(TAKEN_OVER, "in-progress", now + 650)
        assign_dispute(
            conn,
            taken,
            SOLVERS[1],
            (),
            now + 650,
            serbero_pubkey=SERBERO,
            report_recipients=SOLVERS,
        )
    finally:
        conn.close()
    return seeded


@pytest.fixture
def mediated(tmp_path: Path) -> Iterator[tuple[Path, Seeded]]:
    path = tmp_path / "serbero.db"
    yield path, seed(path, int(time.time()) - 1000)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _outputs(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[str]:
    """The command's output as text piped, text on a terminal (keys shortened) and JSON."""
    outputs = []
    for extra in ([], ["--json"]):
        main([*args, *extra])
        out, err = capsys.readouterr()
        outputs.append(out + err)
    tty = _Tty()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", tty)
        main(args)
    outputs.append(tty.getvalue())
    assert all(outputs), args
    return outputs


def _show(path: Path, dispute_id: str, capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(["show", dispute_id, "--db", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["mediation"]


def test_no_output_holds_rationale_chat_summary_dm_text_or_a_party_key(
    mediated: tuple[Path, Seeded],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, seeded = mediated
    assert len(seeded.keys) == 24 and len(seeded.texts) > 30
    commands = [
        ["status", "--db", str(path)],
        ["disputes", "--db", str(path)],
        *(["show", dispute_id, "--db", str(path)] for dispute_id in DISPUTES),
    ]
    for args in commands:
        for output in _outputs(args, monkeypatch, capsys):
            assert MARKER not in output, args
            for key in seeded.keys:
                assert key[:8] + "…" not in output, args
                for at in range(len(key) - KEY_WINDOW + 1):
                    assert key[at : at + KEY_WINDOW] not in output, (args, key)
    # The views did show the mediation, not an empty page.
    for output in _outputs(["show", SUMMARIZED, "--db", str(path)], monkeypatch, capsys):
        assert "coordination_failure_resolvable" in output
        assert seeded.sessions[SUMMARIZED] in output or "…" in output


def test_show_a_summarized_session(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seeded = mediated
    mediation = _show(path, SUMMARIZED, capsys)
    assert [v["decision"] for v in mediation["open_verdicts"]] == ["ask_clarification"]
    assert mediation["escalations"] == []
    (session,) = mediation["sessions"]
    assert session["session_id"] == seeded.sessions[SUMMARIZED]
    assert (session["state"], session["live"], session["rounds"]) == ("closed", False, 1)
    assert (session["messages_out"], session["messages_in"], session["messages_stale"]) == (
        2,
        2,
        0,
    )
    assert [(c["round"], c["label"], c["confidence"]) for c in session["classifications"]] == [
        (0, "unclear", 0.4),
        (1, "coordination_failure_resolvable", 0.9),
    ]
    (summary,) = session["summaries"]
    assert summary["label"] == "coordination_failure_resolvable"
    assert (summary["delivered"], summary["sent"], summary["failed"], summary["queued"]) == (
        True,
        2,
        0,
        0,
    )
    assert session["escalation"] is None and session["superseded_by"] is None


def test_show_escalations_with_their_trigger_and_handoff(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = mediated
    (session,) = _show(path, ESCALATED, capsys)["sessions"]
    assert session["state"] == "escalation_recommended"
    assert session["classifications"][-1]["label"] == "conflicting_claims"
    escalation = session["escalation"]
    assert (escalation["trigger"], escalation["handoff"], escalation["recipients"]) == (
        "conflicting_claims",
        "dispatched",
        1,
    )
    assert escalation["dispatched_at"] is not None

    before = _show(path, BEFORE_TAKE, capsys)
    assert before["sessions"] == []
    (verdict,) = before["open_verdicts"]
    assert (verdict["decision"], verdict["trigger"]) == ("escalate", "fraud_indicator")
    (escalation,) = before["escalations"]
    assert (escalation["session_id"], escalation["trigger"], escalation["handoff"]) == (
        None,
        "fraud_indicator",
        "pending",
    )


def test_show_live_and_superseded_sessions(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = mediated
    (live,) = _show(path, LIVE, capsys)["sessions"]
    assert (live["state"], live["live"], live["superseded_by"]) == (
        "awaiting_response",
        True,
        None,
    )
    (gone,) = _show(path, SUPERSEDED, capsys)["sessions"]
    assert (gone["state"], gone["live"], gone["superseded_by"]) == ("closed", False, "settled")
    (taken,) = _show(path, TAKEN_OVER, capsys)["sessions"]
    assert (taken["state"], taken["superseded_by"]) == ("closed", "in-progress")
    for dispute_id, text in (
        (SUPERSEDED, "the dispute was resolved: settled"),
        (TAKEN_OVER, "a solver took the dispute"),
    ):
        assert main(["show", dispute_id, "--db", str(path)]) == 0
        assert f"Z  {text}\n" in capsys.readouterr().out
    (echoed,) = _show(path, ECHOED, capsys)["sessions"]
    assert (echoed["escalation"]["trigger"], echoed["escalation"]["handoff"]) == (
        "reasoning_unavailable",
        "pending",
    )


def test_show_reads_the_mediation_part_for_people(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    path, seeded = mediated
    assert main(["show", ESCALATED, "--db", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("mediation")
    part = [line.split("Z  ", 1)[-1] for line in lines[start + 1 : lines.index("", start)]]
    assert part[0] == "before take: ask_clarification"
    assert part[1].startswith(f"{seeded.sessions[ESCALATED]}  escalation_recommended (since ")
    assert part[1].endswith("rounds 1  messages out 2 in 2")
    assert part[2:4] == ["open  unclear 0.40", "round 1  conflicting_claims 0.80"]
    assert part[4].startswith("trigger conflicting_claims  handoff dispatched ")
    assert part[4].endswith(" to 1 solver")

    assert main(["show", BEFORE_TAKE, "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "before take: escalate trigger fraud_indicator" in out
    assert "trigger fraud_indicator  handoff pending" in out


def test_status_counts_live_sessions_and_escalations(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = mediated
    main(["status", "--db", str(path), "--json"])
    mediation = json.loads(capsys.readouterr().out)["mediation"]
    assert mediation == {
        "live_sessions": 1,
        "live_by_state": {
            "opening": 0,
            "awaiting_response": 1,
            "classified": 0,
            "follow_up_pending": 0,
            "summary_pending": 0,
        },
        "escalations": {"recommended": 3, "dispatched": 1, "send_failed": 0, "pending": 2},
    }
    main(["status", "--db", str(path)])
    out = capsys.readouterr().out
    assert "mediation   live sessions 1 (opening 0  awaiting_response 1  classified 0" in out
    assert "escalations recommended 3  dispatched 1  send failed 0  pending 2" in out


def test_a_hand_edited_label_or_trigger_is_not_shown(
    mediated: tuple[Path, Seeded], capsys: pytest.CaptureFixture[str]
) -> None:
    """Only words of the closed vocabularies reach the mediation part (MED-90, MED-92)."""
    path, seeded = mediated
    conn, _ = open_database(str(path))
    try:
        with transaction(conn):
            conn.execute(
                "UPDATE mediation_events SET payload_json = json_set(payload_json,"
                " '$.classification', ?) WHERE kind = 'classification_produced'",
                (seeded.texts[0],),
            )
            conn.execute(
                "UPDATE mediation_events SET payload_json = json_set(payload_json, '$.trigger',"
                " ?) WHERE kind = 'escalation_recommended'",
                (seeded.keys[0],),
            )
    finally:
        conn.close()
    mediation = _show(path, ESCALATED, capsys)
    (session,) = mediation["sessions"]
    assert {c["label"] for c in session["classifications"]} == {"<unrecognised>"}
    assert session["escalation"]["trigger"] == "<unrecognised>"
