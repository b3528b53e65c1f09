"""Property (issue 17): whatever the parties send, the model answers and the dispute does,
every mediation session ends in exactly one way, summary / escalation / supersession, never
two; and every escalation's handoff reaches the write solvers exactly once through the
escalation dispatcher's gate, unless the dispute was resolved before the dispatcher came to
it (then it is recorded superseded, ESC-18, and nobody is told twice either).

Each example is a random sequence of steps on a real SQLite file, each step what the engine
does for that event: the store functions of the rounds, summaries and resolution, the outbox
completion request (which settles a summary DM's session), and the real `Gate` over a real
tracker for the dispatcher, its DMs recorded instead of sent. At the end the engine's later
ticks are played out (the summary stage, every DM delivered, the party-response sweep, two
dispatcher passes) and the endings are read back from the database.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import apsw
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serbero.actors.delivery import Delivery
from serbero.actors.gate import Gate
from serbero.actors.tracker import Context, Tracker, open_tracker
from serbero.actors.tracker_requests import CompleteOutboxes, ScanPendingHandoffs
from serbero.config.schema import SolverConfig
from serbero.protocol.wrap_seed import DmIdentity
from serbero.store.chat import (
    Fresh,
    InboundEnvelope,
    OutboundMessage,
    OutboundRound,
    ingest_inbound,
    record_outbound_round,
)
from serbero.store.connection import open_database
from serbero.store.disputes import DisputeEvent, record_detected
from serbero.store.escalate import NotEscalatable, SessionEscalation, recommend_session_escalation
from serbero.store.mediation import NOT_LIVE_SESSION_STATES
from serbero.store.notifications import STATUS_SENT, NotifType
from serbero.store.outbox import OutboxOutcome, claim_due
from serbero.store.rationale import RationaleOccurrence
from serbero.store.resolution import assign_dispute, resolve_dispute
from serbero.store.rounds import (
    increment_eval_failures,
    mark_classified,
    record_classification,
    unresponsive_sessions,
)
from serbero.store.sessions import NewSession, open_session
from serbero.store.summaries import (
    GeneratedSummary,
    begin_summary,
    escalate_summary,
    record_summary,
    summaries_due,
)
from tests.support.clocks import FakeWallClock

T0: Final = 1_790_000_000
STEP_SECONDS: Final = 30
MAX_ROUNDS: Final = 2  # [mediation].max_rounds default (MED-103)
FAILURE_BUDGET: Final = 3  # MED-95
RESPONSE_TIMEOUT: Final = 1_800  # [mediation].party_response_timeout_seconds default
MOSTRO: Final = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
SERBERO: Final = "5e" * 32
WRITERS: Final = ("a1" * 32, "a2" * 32)
READER: Final = "b1" * 32
SOLVERS: Final = (
    SolverConfig.from_text(WRITERS[0], "write"),
    SolverConfig.from_text(READER, "read"),
    SolverConfig.from_text(WRITERS[1], "write"),
)
SOLVER_KEYS: Final = tuple(s.pubkey for s in SOLVERS)
BUNDLE: Final = ("phase3-default", "c" * 64)
# Endings read back from the database.
SUMMARY: Final = "summary"
ESCALATION: Final = "escalation"
SUPERSESSION: Final = "supersession"

STEPS = st.one_of(
    st.tuples(st.just("party"), st.sampled_from(("buyer", "seller"))),
    st.tuples(
        st.just("model"),
        st.sampled_from(("ask", "summarize", "summary_fails", "escalate", "fail")),
    ),
    st.tuples(st.just("resolve"), st.sampled_from(("settled", "released", "seller-refunded"))),
    st.tuples(st.just("human_take"), st.sampled_from(WRITERS)),
    st.tuples(st.just("sweep"), st.booleans()),
    st.tuples(st.just("deliver"), st.booleans()),
    st.tuples(st.just("summaries"), st.just(True)),
    st.tuples(st.just("dispatch"), st.just(True)),
)


class World:
    """One dispute, its session, the clock and the dispatcher's recorded DMs."""

    def __init__(self, conn: apsw.Connection, tracker: Tracker, clock: FakeWallClock) -> None:
        self.conn = conn
        self.tracker = tracker
        self.clock = clock
        self.dispute_id = str(uuid.uuid4())
        self.session_id = str(uuid.uuid4())
        self.shared = {"buyer": os.urandom(32).hex(), "seller": os.urandom(32).hex()}
        self.resolved = False
        self.handoff_dms: list[tuple[int, str]] = []
        self.gate = Gate(
            tracker, self._deliver, solvers=SOLVERS, fallback_to_all_solvers=False, wall_clock=clock
        )

    @property
    def now(self) -> int:
        return self.clock.now

    async def _deliver(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        self.handoff_dms.append((dm.number, solver.pubkey))
        return Delivery(ok=True, error=None, retryable=False)

    def open(self) -> None:
        record_detected(
            self.conn,
            DisputeEvent(
                dispute_id=self.dispute_id,
                event_id=os.urandom(32).hex(),
                mostro_pubkey=MOSTRO,
                event_timestamp=self.now - 60,
                status="initiated",
                initiator_role="buyer",
            ),
            (),
            self.now - 60,
        )
        open_session(
            self.conn,
            self.session_id,
            NewSession(
                dispute_id=self.dispute_id,
                prompt_bundle_id=BUNDLE[0],
                policy_hash=BUNDLE[1],
                buyer_shared_pubkey=self.shared["buyer"],
                seller_shared_pubkey=self.shared["seller"],
                buyer_trade_pubkey=os.urandom(32).hex(),
                seller_trade_pubkey=os.urandom(32).hex(),
            ),
            self.now,
        )
        self._round(follow_up=False, marker=None)
        self._in_progress(SERBERO)  # Mostro's `in-progress` after Serbero's own take

    def _event(self, status: str) -> DisputeEvent:
        """A dispute event Mostro publishes now, with `status`."""
        return DisputeEvent(
            dispute_id=self.dispute_id,
            event_id=os.urandom(32).hex(),
            mostro_pubkey=MOSTRO,
            event_timestamp=self.now,
            status=status,
            initiator_role="buyer",
        )

    def _in_progress(self, solver: str) -> None:
        assign_dispute(
            self.conn,
            self._event("in-progress"),
            solver,
            (),
            self.now,
            serbero_pubkey=SERBERO,
            report_recipients=SOLVER_KEYS,
        )

    def state(self) -> str:
        row = self.conn.execute(
            "SELECT state, round_count_last_evaluated FROM mediation_sessions WHERE session_id = ?",
            (self.session_id,),
        ).fetchone()
        return str(row[0])

    def _fresh_and_marker(self) -> tuple[int, int]:
        fresh = self.conn.execute(
            "SELECT COUNT(*) FROM mediation_messages WHERE session_id = ?"
            " AND direction = 'inbound' AND stale = 0",
            (self.session_id,),
        ).fetchone()
        marker = self.conn.execute(
            "SELECT round_count_last_evaluated FROM mediation_sessions WHERE session_id = ?",
            (self.session_id,),
        ).fetchone()
        return int(fresh[0]), int(marker[0])

    def _round(self, *, follow_up: bool, marker: int | None) -> None:
        def half(party: str) -> OutboundMessage:
            return OutboundMessage(
                party="buyer" if party == "buyer" else "seller",
                shared_pubkey=self.shared[party],
                inner_event_id=os.urandom(32).hex(),
                inner_created_at=self.now,
                outer_event_id=os.urandom(32).hex(),
                content=f"{party}: a question",
                wrap_json="{}",
            )

        record_outbound_round(
            self.conn,
            OutboundRound(
                self.session_id, half("buyer"), half("seller"), follow_up=follow_up, marker=marker
            ),
            self.now,
        )

    def _rationale(self, purpose: str = "classification") -> RationaleOccurrence:
        return RationaleOccurrence(
            text="the accounts agree",
            purpose="summary" if purpose == "summary" else "classification",
            dispute_id=self.dispute_id,
            session_id=self.session_id,
            provider="openai",
            model="scripted",
            prompt_bundle_id=BUNDLE[0],
            policy_hash=BUNDLE[1],
        )

    def _recommend(self, trigger: str, from_states: Sequence[str] | None = None) -> None:
        request = SessionEscalation(
            session_id=self.session_id, dispute_id=self.dispute_id, trigger=trigger
        )
        with contextlib.suppress(NotEscalatable):  # another ending came first
            recommend_session_escalation(self.conn, request, SOLVER_KEYS, self.now)

    # -- the steps ---------------------------------------------------------------------

    def party(self, role: str) -> None:
        """An answer on the dispute chat, ingested by the chat pass while the session is live;
        the round limit follows a Fresh one (MED-103)."""
        if self.state() in NOT_LIVE_SESSION_STATES:
            return
        outcome = ingest_inbound(
            self.conn,
            self.session_id,
            InboundEnvelope(
                party="buyer" if role == "buyer" else "seller",
                shared_pubkey=self.shared[role],
                inner_event_id=os.urandom(32).hex(),
                inner_created_at=self.now,
                outer_event_id=os.urandom(32).hex(),
                content=f"{role} says something",
            ),
            self.now,
        )
        if isinstance(outcome, Fresh) and outcome.round_count >= MAX_ROUNDS:
            self._recommend("round_limit")

    def model(self, answer: str) -> None:
        """One evaluation (MED-93), run only for an `awaiting_response` session with fresh
        messages past its marker (Q-1), with the model answering `answer`."""
        fresh, marker = self._fresh_and_marker()
        if self.state() != "awaiting_response" or fresh <= marker:
            return
        if answer == "fail":
            if increment_eval_failures(self.conn, self.session_id) >= FAILURE_BUDGET:
                self._recommend("reasoning_unavailable")
            return
        record_classification(
            self.conn,
            self.session_id,
            self._rationale(),
            classification="coordination_failure_resolvable",
            confidence=0.8,
            now=self.now,
        )
        if answer == "ask":
            self._round(follow_up=True, marker=fresh)
        elif answer == "escalate":
            self._recommend("conflicting_claims")
        elif mark_classified(self.conn, self.session_id, fresh, self.now):
            self._summarise(succeeds=answer == "summarize")

    def _summarise(self, *, succeeds: bool) -> None:
        """§11 for the session: claim it, then the summary and its DMs, or the escalation a
        failed summary call ends in (MED-124)."""
        job = begin_summary(self.conn, self.session_id, self.now)
        if job is None:
            return
        if not succeeds:
            escalate_summary(
                self.conn,
                self.session_id,
                self.dispute_id,
                trigger="reasoning_unavailable",
                reason="summary call failed",
                solvers=SOLVER_KEYS,
                now=self.now,
            )
            return
        record_summary(
            self.conn,
            job,
            GeneratedSummary(
                summary_text="Both parties agree the transfer is late.",
                suggested_next_step="confirm receipt",
                rationale=self._rationale("summary"),
            ),
            SOLVER_KEYS,
            self.now,
        )

    def resolve(self, status: str) -> None:
        """Mostro publishes a resolution; the ingest resolves the dispute (MED-140)."""
        if self.resolved:
            return
        self.resolved = True
        resolve_dispute(
            self.conn,
            self._event(status),
            (),
            SOLVER_KEYS,
            self.now,
        )

    def human_take(self, solver: str) -> None:
        """A human solver takes the dispute (Q-6, BEY-18): its live session is superseded."""
        if not self.resolved:
            self._in_progress(solver)

    def sweep(self, elapsed: bool) -> None:
        """The party-response sweep (§12.1 #4), with the timeout passed or not."""
        at = self.now + (RESPONSE_TIMEOUT + 1 if elapsed else 0)
        for _ in unresponsive_sessions(self.conn, at, RESPONSE_TIMEOUT):
            self._recommend("party_unresponsive")

    def deliver(self, ok: bool) -> None:
        """The sender: every due DM attempted, accepted or refused for good, completed
        through the tracker request that also settles summary DMs (MED-113)."""
        claim = claim_due(self.conn, self.now, 1_000)
        outcomes = tuple(
            OutboxOutcome(row.id, ok, None if ok else "relay refused", retry=False)
            for row in claim.rows
        )
        if outcomes:
            CompleteOutboxes(outcomes).apply(self.conn, Context(self.now, os.urandom))

    def summaries(self, _: bool) -> None:
        """The tick's summary stage (Q-2): `classified` sessions, and interrupted ones."""
        for session_id in summaries_due(self.conn):
            assert session_id == self.session_id
            self._summarise(succeeds=True)

    async def dispatch(self, _: bool = True) -> None:
        """One escalation dispatcher pass: every pending handoff through the gate."""
        for handoff in await self.tracker.ask(ScanPendingHandoffs()):
            await self.gate.process(handoff)

    async def play(self, step: tuple[str, object]) -> None:
        self.clock.advance(STEP_SECONDS)
        name, argument = step
        if name == "dispatch":
            await self.dispatch()
        else:
            getattr(self, name)(argument)

    async def finish(self) -> None:
        """The ticks that follow: summaries, DMs out, the sweep, the dispatcher twice."""
        for step in (
            ("summaries", True),
            ("deliver", True),
            ("sweep", True),
            ("summaries", True),
            ("deliver", True),
            ("dispatch", True),
            ("dispatch", True),
        ):
            await self.play(step)


def _count(conn: apsw.Connection, sql: str, *args: object) -> int:
    row = conn.execute(sql, args).fetchone()
    return int(row[0])


def endings(world: World) -> list[str]:
    """How the session ended, from the database: a summary delivered (closed, a summary DM
    sent, not superseded), escalated, superseded."""
    conn, sid = world.conn, world.session_id
    events = {
        kind: _count(
            conn,
            "SELECT COUNT(*) FROM mediation_events WHERE session_id = ? AND kind = ?",
            sid,
            kind,
        )
        for kind in ("escalation_recommended", "handoff_prepared", "superseded_by_human")
    }
    assert events["escalation_recommended"] <= 1 and events["superseded_by_human"] <= 1
    assert events["handoff_prepared"] == events["escalation_recommended"]
    summary_sent = _count(
        conn,
        "SELECT COUNT(*) FROM notifications WHERE dispute_id = ? AND notif_type = ? AND status = ?",
        world.dispute_id,
        NotifType.MEDIATION_SUMMARY,
        STATUS_SENT,
    )
    found = []
    if summary_sent:
        found.append(SUMMARY)
    if events["escalation_recommended"]:
        found.append(ESCALATION)
    if events["superseded_by_human"]:
        found.append(SUPERSESSION)
    return found


def check_handoffs(world: World) -> None:
    """Each handoff: its DMs went to the write solvers once each (both, or the one who took
    the dispute: ESC-19) with one dispatch row, or (dispute resolved first) none went."""
    conn = world.conn
    handoffs = [
        int(row[0])
        for row in conn.execute(
            "SELECT id FROM mediation_events WHERE kind = 'handoff_prepared' AND session_id = ?",
            (world.session_id,),
        )
    ]
    for handoff in handoffs:
        sent = sorted(key for ref, key in world.handoff_dms if ref == handoff)
        dispatches = _count(
            conn, "SELECT COUNT(*) FROM escalation_dispatches WHERE handoff_event_id = ?", handoff
        )
        if sent:
            status = conn.execute(
                "SELECT status FROM escalation_dispatches WHERE handoff_event_id = ?", (handoff,)
            ).fetchall()
            assigned = conn.execute(
                "SELECT assigned_solver FROM disputes WHERE dispute_id = ?", (world.dispute_id,)
            ).fetchone()[0]
            assert sent in (sorted(WRITERS), [assigned]), (handoff, sent, assigned)
            assert status == [("dispatched",)], (handoff, status)
        else:
            assert world.resolved and dispatches == 0, (handoff, world.resolved)


async def run_example(path: str, steps: Sequence[tuple[str, object]]) -> None:
    clock = FakeWallClock(T0)
    conn, _ = open_database(path)
    try:
        async with open_tracker(path, wall_clock=clock, offload=False) as tracker:
            world = World(conn, tracker, clock)
            world.open()
            for step in steps:
                await world.play(step)
            await world.finish()
            assert world.state() in ("closed", "escalation_recommended"), world.state()
            found = endings(world)
            assert len(found) == 1, (found, steps)
            check_handoffs(world)
    finally:
        conn.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEPS, max_size=24))
# The dispute resolved, or a human took it, while the summary DM waited in the outbox:
# superseded, no summary.
@example(
    steps=[("party", "buyer"), ("model", "summarize"), ("resolve", "settled"), ("deliver", True)]
)
@example(
    steps=[
        ("party", "buyer"),
        ("model", "summarize"),
        ("human_take", WRITERS[0]),
        ("deliver", True),
    ]
)
def test_every_session_ends_once_and_every_escalation_reaches_the_writers_once(
    steps: list[tuple[str, object]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        trio.run(run_example, str(Path(directory) / "serbero.db"), steps)
