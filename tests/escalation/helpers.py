"""Builders shared by the escalation tests: mediation's stand-in writer, packages, deliveries.

Mediation is a separate writer in the real daemon's future: handoffs are inserted here with
stdlib `sqlite3` on the same file, from another process, while the tracker holds its APSW
connection, so the tests also prove the dispatcher sees rows it did not write itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from serbero.actors import gate as gate_actor
from serbero.actors.delivery import SEND_FAILED_PREFIX, Deliver, Delivery, DmIdentity
from serbero.actors.gate import Gate, HandoffDone
from serbero.actors.scanner import CycleReport, scan_cycle
from serbero.actors.tracker import Request, Tracker
from serbero.clock import WallClock
from serbero.config import SolverConfig
from serbero.protocol.keys import Keys
from serbero.store.escalation import HandoffRow
from tests.support.sqlite_process import SqliteProcess

T0: Final = 1_700_000_000
MOSTRO: Final = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
BUNDLE: Final = "phase3-default"
POLICY: Final = "h1"
SCRIPTED_FAILURE: Final = SEND_FAILED_PREFIX + "ws://scripted: rejected (blocked: test)"

# The reference's operator SQL recipes for the dispatcher, verbatim.
RECIPE_SEND_FAILED: Final = "SELECT * FROM escalation_dispatches WHERE status = 'send_failed';"
RECIPE_FOLLOWED: Final = (
    "SELECT kind, substr(payload_json,1,80), occurred_at FROM mediation_events WHERE kind IN"
    " ('handoff_prepared','escalation_dispatched') ORDER BY id DESC LIMIT 4;"
)
RECIPE_LATEST: Final = (
    "SELECT dispatch_id, dispute_id, target_solver, status, fallback_broadcast FROM"
    " escalation_dispatches ORDER BY dispatched_at DESC LIMIT 5;"
)
RECIPE_STRANDED: Final = (
    "SELECT me.id, me.occurred_at, json_extract(me.payload_json,'$.dispute_id') AS dispute_id"
    " FROM mediation_events me WHERE me.kind = 'escalation_dispatch_unroutable'"
    " ORDER BY me.occurred_at DESC;"
)
RECIPE_SKIPPED: Final = RECIPE_STRANDED.replace(
    "'escalation_dispatch_unroutable'", "'escalation_superseded'"
)
RECIPE_PARSE_FAILURES: Final = (
    "SELECT me.id, me.occurred_at, json_extract(me.payload_json,'$.reason') AS reason,"
    " json_extract(me.payload_json,'$.detail') AS detail FROM mediation_events me"
    " WHERE me.kind = 'escalation_dispatch_parse_failed' ORDER BY me.occurred_at DESC;"
)
RECIPE_FAILED_RECIPIENTS: Final = (
    "SELECT COUNT(*) FROM notifications WHERE dispute_id = (SELECT dispute_id FROM"
    " escalation_dispatches ORDER BY dispatched_at DESC LIMIT 1) AND status = 'failed';"
)
RECIPE_DISPUTE_EVENTS: Final = (
    "SELECT id, kind, substr(payload_json,1,120), occurred_at FROM mediation_events WHERE kind"
    " IN ('escalation_dispatched','escalation_superseded','escalation_dispatch_unroutable',"
    "'escalation_dispatch_parse_failed') AND json_extract(payload_json,'$.dispute_id') = ?"
    " ORDER BY id ASC;"
)
RECIPE_RECONCILIATION: Final = (
    "SELECT d.dispatch_id FROM escalation_dispatches d LEFT JOIN mediation_events e ON"
    " json_extract(e.payload_json,'$.dispatch_id') = d.dispatch_id AND e.kind ="
    " 'escalation_dispatched' WHERE e.id IS NULL UNION ALL SELECT"
    " json_extract(e.payload_json,'$.dispatch_id') FROM mediation_events e LEFT JOIN"
    " escalation_dispatches d ON json_extract(e.payload_json,'$.dispatch_id') = d.dispatch_id"
    " WHERE e.kind = 'escalation_dispatched' AND d.dispatch_id IS NULL;"
)
RECIPE_ADMIN_ACTIONS: Final = (
    "SELECT COUNT(*) FROM notifications WHERE notif_type IN ('admin_settle','admin_cancel');"
)


def package(
    dispute_id: str,
    session_id: str | None = None,
    *,
    trigger: str = "round_limit",
    assembled_at: int = 1_745_000_000,
    **extra: Any,
) -> str:
    """A `handoff_prepared` payload as mediation writes it (ESC-2); no session omits the key."""
    payload: dict[str, Any] = {"dispute_id": dispute_id}
    if session_id is not None:
        payload["session_id"] = session_id
    payload.update(
        trigger=trigger,
        evidence_refs=["ev-1", "ev-2"],
        prompt_bundle_id=BUNDLE,
        policy_hash=POLICY,
        rationale_refs=["ab" * 32],
        assembled_at=assembled_at,
        **extra,
    )
    return json.dumps(payload)


class SecondWriter(SqliteProcess):
    """Mediation's stand-in: stdlib sqlite3 on the daemon's database, in its own process."""

    def add_dispute(
        self, dispute_id: str, *, state: str = "notified", assigned: str | None = None
    ) -> None:
        self.execute(
            "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
            " dispute_status, event_timestamp, detected_at, lifecycle_state, assigned_solver)"
            " VALUES (?, ?, ?, 'buyer', 'initiated', ?, ?, ?, ?)",
            (dispute_id, f"ev-{dispute_id}", MOSTRO, T0, T0, state, assigned),
        )

    def add_session(self, session_id: str, dispute_id: str) -> None:
        self.execute(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
            " policy_hash, started_at, last_transition_at)"
            " VALUES (?, ?, 'escalation_recommended', ?, ?, ?, ?)",
            (session_id, dispute_id, BUNDLE, POLICY, T0, T0),
        )

    def add_handoff(
        self,
        payload_json: str,
        *,
        session_id: str | None = None,
        pins: tuple[str | None, str | None] = (BUNDLE, POLICY),
        occurred_at: int = T0,
    ) -> int:
        """`escalation_recommended` and `handoff_prepared` in one transaction, as mediation
        writes them (ESC-1); returns the handoff's id."""
        insert = (
            "INSERT INTO mediation_events (session_id, kind, payload_json, prompt_bundle_id,"
            " policy_hash, occurred_at) VALUES (?, ?, ?, ?, ?, ?)"
        )
        answer = self.call(
            [
                (insert, (session_id, "escalation_recommended", "{}", *pins, occurred_at)),
                (insert, (session_id, "handoff_prepared", payload_json, *pins, occurred_at)),
            ],
            transaction=True,
        )
        handoff_id: int = answer["lastrowids"][-1]
        return handoff_id

    def add_handoffs(self, payloads: Sequence[str], *, occurred_at: int = T0) -> list[int]:
        """Many dispute-scoped handoffs in one transaction; their ids in order."""
        insert = (
            "INSERT INTO mediation_events (session_id, kind, payload_json, prompt_bundle_id,"
            " policy_hash, occurred_at) VALUES (NULL, 'handoff_prepared', ?, ?, ?, ?)"
        )
        answer = self.call(
            [(insert, (payload, BUNDLE, POLICY, occurred_at)) for payload in payloads],
            transaction=True,
        )
        return list(answer["lastrowids"])

    def set_state(self, dispute_id: str, state: str) -> None:
        self.execute(
            "UPDATE disputes SET lifecycle_state = ? WHERE dispute_id = ?", (state, dispute_id)
        )

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.call([(sql, args)])["rows"]]

    def one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        (row,) = self.rows(sql, args)
        return row[0] if len(row) == 1 else row

    def count(self, table: str, where: str = "1", args: Sequence[Any] = ()) -> int:
        return int(self.one(f"SELECT COUNT(*) FROM {table} WHERE {where}", args))

    def audit(self, kind: str) -> list[dict[str, Any]]:
        """Payloads of one audit kind, oldest first."""
        return [
            json.loads(payload)
            for (payload,) in self.rows(
                "SELECT payload_json FROM mediation_events WHERE kind = ? ORDER BY id", (kind,)
            )
        ]

    def dispatches(self) -> list[tuple[Any, ...]]:
        """(dispatch_id, dispute_id, session_id, handoff_event_id, target_solver,
        dispatched_at, created_at, status, fallback_broadcast), oldest first."""
        return self.rows(
            "SELECT dispatch_id, dispute_id, session_id, handoff_event_id, target_solver,"
            " dispatched_at, created_at, status, fallback_broadcast FROM escalation_dispatches"
            " ORDER BY rowid"
        )

    def notifications(self) -> list[tuple[Any, ...]]:
        """(dispute_id, solver_pubkey, sent_at, status, error_message, notif_type)."""
        return self.rows(
            "SELECT dispute_id, solver_pubkey, sent_at, status, error_message, notif_type"
            " FROM notifications ORDER BY id"
        )

    def fail_inserts(self, name: str, table: str, when: str) -> None:
        """A trigger that aborts matching inserts: an injected store failure."""
        self.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN {when}"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )

    def drop_trigger(self, name: str) -> None:
        self.execute(f"DROP TRIGGER {name}")


def solver(permission: str = "write", keys: Keys | None = None) -> tuple[SolverConfig, Keys]:
    """A solver with a fresh key pair."""
    keys = Keys.generate() if keys is None else keys
    return SolverConfig.from_text(keys.public_hex, permission), keys  # type: ignore[arg-type]


class ScriptedDeliver:
    """A `Deliver` that succeeds except for the pubkeys in `failing`, and records each call."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.failing = set(failing)
        self.calls: list[tuple[str, str, int]] = []  # (solver, body, rumor time)

    async def __call__(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        self.calls.append((solver.pubkey, body, dm.created_at))
        await trio.lowlevel.checkpoint()
        if solver.pubkey_error is not None:
            return Delivery(ok=False, error=solver.pubkey_error, retryable=False)
        if solver.pubkey in self.failing:
            return Delivery(ok=False, error=SCRIPTED_FAILURE, retryable=True)
        return Delivery(ok=True, error=None, retryable=True)


class SpyDeliver:
    """Wraps a real `Deliver` and records every recipient it was asked to reach."""

    def __init__(self, inner: Deliver, after: Callable[[], Awaitable[None]] | None = None) -> None:
        self.inner = inner
        self.after = after
        self.calls: list[str] = []

    async def __call__(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        self.calls.append(solver.pubkey)
        delivery = await self.inner(solver, body, dm)
        if self.after is not None:
            await self.after()
        return delivery


class FaultyTracker:
    """Answers like the real tracker, except that `fault(request)` may raise instead."""

    def __init__(self, inner: Tracker, fault: Callable[[Request[Any]], Exception | None]) -> None:
        self.inner = inner
        self.fault = fault
        self.outage = inner.outage

    async def ask(self, request: Request[Any], **kwargs: Any) -> Any:
        problem = self.fault(request)
        if problem is not None:
            raise problem
        return await self.inner.ask(request, **kwargs)

    async def submit(self, request: Request[Any], **kwargs: Any) -> Any:
        problem = self.fault(request)
        if problem is not None:
            raise problem
        return await self.inner.submit(request, **kwargs)


Cycle = Callable[[], Awaitable[CycleReport]]


@asynccontextmanager
async def dispatcher_cycles(
    tracker: Tracker,
    deliver: Deliver,
    *,
    solvers: Sequence[SolverConfig],
    fallback: bool = False,
    wall_clock: WallClock,
    ring_sender: Callable[[], None] = lambda: None,
) -> AsyncIterator[Cycle]:
    """The gate actor running, and a function that runs one scanner cycle on demand: the
    acceptance scenarios count cycles, not seconds."""
    handoff_send, handoff_receive = trio.open_memory_channel[HandoffRow](0)
    done_send, done_receive = trio.open_memory_channel[HandoffDone](0)
    gate = Gate(
        tracker,
        deliver,
        solvers=solvers,
        fallback_to_all_solvers=fallback,
        wall_clock=wall_clock,
        ring_sender=ring_sender,
    )

    async def cycle() -> CycleReport:
        return await scan_cycle(tracker, handoff_send, done_receive)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate_actor.run, gate, handoff_receive, done_send)
        yield cycle
        nursery.cancel_scope.cancel()
