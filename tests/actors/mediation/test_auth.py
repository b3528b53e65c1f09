"""The solver-authorization handle and retry loop (MED-51..54, MED-56, BEY-24), on virtual time."""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio
import trio.testing

from serbero.actors.mediation.auth import (
    AUTH_PENDING,
    AUTH_TERMINATED,
    AuthCheckFailed,
    AuthRetryPolicy,
    AuthState,
    SolverAuth,
)
from serbero.actors.tracker import open_tracker
from serbero.config.schema import MediationConfig
from serbero.store.connection import open_database
from tests.store.helpers import rows
from tests.support.clocks import TrioWallClock


class ScriptedCheck:
    """Fails `failures` times (with numbered errors), then passes; counts calls and when."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def __call__(self) -> None:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise AuthCheckFailed(f"not a solver ({len(self.calls)})")


def audit(db_path: str) -> list[tuple[str, dict[str, object]]]:
    conn, _ = open_database(db_path)
    try:
        found = rows(
            conn,
            "SELECT kind, payload_json, session_id, prompt_bundle_id FROM mediation_events"
            " ORDER BY id",
        )
    finally:
        conn.close()
    assert all(row[2] is None and row[3] is None for row in found)
    return [(str(kind), msgspec.json.decode(payload)) for kind, payload, *_ in found]


async def run_until_settled(
    db_path: str, check: ScriptedCheck, policy: AuthRetryPolicy, settle: float
) -> SolverAuth:
    async with open_tracker(db_path, wall_clock=TrioWallClock(), offload=False) as tracker:
        auth = SolverAuth(tracker, check, policy)
        async with trio.open_nursery() as nursery:
            await nursery.start(auth.run)
            await trio.sleep(settle)
            nursery.cancel_scope.cancel()
    return auth


async def test_a_passing_check_at_bring_up_authorizes_without_audit_rows(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    db_path = str(tmp_path / "serbero.db")
    auth = await run_until_settled(db_path, ScriptedCheck(0), AuthRetryPolicy(), 10_000)
    assert auth.state is AuthState.AUTHORIZED and auth.refusal() is None
    assert audit(db_path) == []


async def test_the_default_loop_terminates_at_attempt_24_after_64980_seconds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """MED-54: 60 s doubling to 3600 s; attempt 24 ends it with cumulative_secs=64980."""
    db_path = str(tmp_path / "serbero.db")
    check = ScriptedCheck(failures=1_000)
    auth = await run_until_settled(db_path, check, AuthRetryPolicy(), 200_000)
    assert auth.state is AuthState.TERMINATED and auth.refusal() == AUTH_TERMINATED
    events = audit(db_path)
    attempts = [payload for kind, payload in events if kind == "auth_retry_attempt"]
    assert [p["attempt"] for p in attempts] == list(range(1, 25))
    assert attempts[0] == {"attempt": 1, "error": "not a solver (1)"}
    assert events[-1] == ("auth_retry_terminated", {"attempt": 24, "cumulative_secs": 64980})
    gaps = [round(b - a) for a, b in zip(check.calls, check.calls[1:], strict=False)]
    assert gaps[:8] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


async def test_the_configured_keys_drive_the_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """BEY-24: the four `solver_auth_retry_*` keys replace the reference's constants."""
    db_path = str(tmp_path / "serbero.db")
    policy = AuthRetryPolicy.from_config(
        MediationConfig(
            solver_auth_retry_initial_seconds=5,
            solver_auth_retry_max_interval_seconds=8,
            solver_auth_retry_max_total_seconds=1_000,
            solver_auth_retry_max_attempts=4,
        )
    )
    check = ScriptedCheck(failures=1_000)
    auth = await run_until_settled(db_path, check, policy, 1_000)
    assert auth.state is AuthState.TERMINATED
    assert [round(b - a) for a, b in zip(check.calls, check.calls[1:], strict=False)] == [5, 8, 8]
    assert audit(db_path)[-1] == ("auth_retry_terminated", {"attempt": 4, "cumulative_secs": 21})


async def test_recovery_re_enables_opens_and_a_loss_starts_a_new_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Pending while the loop runs (MAS-3 text), authorized again on a passing check without
    a restart; a reported loss (MED-56) flips it back and loops again."""
    db_path = str(tmp_path / "serbero.db")
    check = ScriptedCheck(failures=2)
    async with open_tracker(db_path, wall_clock=TrioWallClock(), offload=False) as tracker:
        auth = SolverAuth(tracker, check, AuthRetryPolicy())
        async with trio.open_nursery() as nursery:
            await nursery.start(auth.run)
            assert auth.refusal() == AUTH_PENDING
            await trio.sleep(60 + 120 + 1)
            assert auth.authorized
            check.failures = 4  # the next two checks fail again
            auth.report_lost("cant-do not_authorized")
            auth.report_lost("reported twice: ignored")
            assert auth.refusal() == AUTH_PENDING
            await trio.sleep(60 + 120 + 1)
            assert auth.authorized
            nursery.cancel_scope.cancel()
    kinds = [(kind, payload["attempt"]) for kind, payload in audit(db_path)]
    assert kinds == [
        ("auth_retry_attempt", 1),
        ("auth_retry_attempt", 2),
        ("auth_retry_recovered", 3),
        ("auth_retry_attempt", 1),
        ("auth_retry_attempt", 2),
        ("auth_retry_recovered", 3),
    ]
    assert audit(db_path)[3][1] == {"attempt": 1, "error": "cant-do not_authorized"}
