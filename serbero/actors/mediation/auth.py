"""Serbero's standing as a Mostro solver, and the retry loop that restores it (§5, BEY-24).

The handle is read by every open (MED-51): only `AUTHORIZED` lets a take be tried. A failed
check makes it `UNAUTHORIZED` and starts the loop: wait, check again, doubling the wait up to
`[mediation].solver_auth_retry_max_interval_seconds`, until the check passes (`AUTHORIZED`,
no restart needed) or the attempt or time budget is spent (`TERMINATED`). Each step writes
its `auth_retry_*` audit row; a failing audit write never stops the loop.

The check is given by the caller. The reference's check always passes (MED-53) because no
Mostro exchange can ask "am I a solver?"; the signal that exists is a take refused with
`not_authorized`/`invalid_pubkey` (PROTO-55), which the open procedure reports with
`report_lost` (MED-56), starting a new loop (Q-8).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import trio

from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import RecordAuthEvent
from serbero.config.schema import MediationConfig
from serbero.log import get_logger
from serbero.store.auth_events import AuthEventKind
from serbero.store.errors import StoreError

__all__ = [
    "AUTH_PENDING",
    "AUTH_TERMINATED",
    "AuthCheck",
    "AuthCheckFailed",
    "AuthRetryPolicy",
    "AuthState",
    "SolverAuth",
]

log = get_logger("serbero.mediation")

# MAS-3: what an open refused by the auth gate says.
AUTH_PENDING: Final = "solver authorization pending"
AUTH_TERMINATED: Final = "solver authorization terminated"


class AuthState(enum.StrEnum):
    AUTHORIZED = "authorized"
    UNAUTHORIZED = "unauthorized"
    TERMINATED = "terminated"


class AuthCheckFailed(Exception):
    """The check says Serbero is not (yet) a solver; the text goes to the audit row."""


AuthCheck = Callable[[], Awaitable[None]]


class AuthRetryPolicy(msgspec.Struct, frozen=True):
    """The four `[mediation].solver_auth_retry_*` keys (BEY-24); defaults are MED-54's."""

    initial_seconds: int = 60
    max_interval_seconds: int = 3600
    max_total_seconds: int = 86400
    max_attempts: int = 24

    @classmethod
    def from_config(cls, mediation: MediationConfig) -> AuthRetryPolicy:
        return cls(
            initial_seconds=mediation.solver_auth_retry_initial_seconds,
            max_interval_seconds=mediation.solver_auth_retry_max_interval_seconds,
            max_total_seconds=mediation.solver_auth_retry_max_total_seconds,
            max_attempts=mediation.solver_auth_retry_max_attempts,
        )


class SolverAuth:
    """The auth handle and its loop; start with `await nursery.start(auth.run)`."""

    def __init__(self, tracker: Tracker, check: AuthCheck, policy: AuthRetryPolicy) -> None:
        self._tracker = tracker
        self._check = check
        self._policy = policy
        self.state = AuthState.UNAUTHORIZED
        # How many times `report_lost` took the authorization away: the round evaluator
        # compares it each tick to end the sessions Serbero can no longer mediate (MED-56).
        self.losses = 0
        self._lost = trio.Event()
        self._lost_error = ""

    @property
    def authorized(self) -> bool:
        return self.state is AuthState.AUTHORIZED

    def refusal(self) -> str | None:
        """None when opens may proceed; else the MAS-3 text for the refused open."""
        if self.state is AuthState.AUTHORIZED:
            return None
        return AUTH_TERMINATED if self.state is AuthState.TERMINATED else AUTH_PENDING

    def report_lost(self, error: str) -> None:
        """MED-56: an outbound step learnt Serbero is no longer a solver. Authorized ->
        Unauthorized and a new retry loop; otherwise nothing changes."""
        if self.state is not AuthState.AUTHORIZED:
            return
        log.error("solver_authorization_lost", error=error)
        self.state = AuthState.UNAUTHORIZED
        self.losses += 1
        self._lost_error = error
        self._lost.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """MED-52: check once at bring-up (the handle is settled before `started`), loop on
        failure; afterwards run one loop per reported loss."""
        error = await self._attempt()
        if error is None:
            self.state = AuthState.AUTHORIZED
        task_status.started()
        while True:
            if error is not None:
                await self._record("auth_retry_attempt", 1, error=error)
                await self._retry_loop()
            await self._lost.wait()
            self._lost = trio.Event()
            error = self._lost_error

    async def _attempt(self) -> str | None:
        try:
            await self._check()
        except AuthCheckFailed as exc:
            return str(exc) or type(exc).__name__
        return None

    async def _retry_loop(self) -> None:
        """MED-54 with the configured budget."""
        policy = self._policy
        delay, cumulative, attempt = policy.initial_seconds, 0, 1
        while True:
            await trio.sleep(delay)
            cumulative += delay
            attempt += 1
            error = await self._attempt()
            if error is None:
                self.state = AuthState.AUTHORIZED
                log.info("solver_authorization_recovered", attempt=attempt)
                await self._record("auth_retry_recovered", attempt)
                return
            await self._record("auth_retry_attempt", attempt, error=error)
            if attempt >= policy.max_attempts or cumulative >= policy.max_total_seconds:
                self.state = AuthState.TERMINATED
                log.error(
                    "solver_authorization_terminated", attempt=attempt, cumulative_secs=cumulative
                )
                await self._record("auth_retry_terminated", attempt, cumulative_secs=cumulative)
                return
            delay = min(2 * delay, policy.max_interval_seconds)

    async def _record(
        self,
        kind: AuthEventKind,
        attempt: int,
        *,
        error: str | None = None,
        cumulative_secs: int | None = None,
    ) -> None:
        try:
            await self._tracker.ask(RecordAuthEvent(kind, attempt, error, cumulative_secs))
        except StoreError as exc:
            log.warning("auth_event_not_recorded", kind=kind, error=str(exc))
