"""The daemon's handle on the mediation engine: start requests in, live figures out.

The ingest and the supervisor are built before anyone knows whether mediation will come up
(the provider's health check runs beside the core, MED-10). They hold this handle from the
start; the engine attaches its start actor once it runs and detaches when it stops. Until
then a start request is a quiet no-op: the engine's tick finds every eligible dispute anyway
(MED-31), so detection and solver notification never wait on mediation (MED-30).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

__all__ = [
    "EngineFigures",
    "EngineStatus",
    "MediationHandle",
    "StartRequester",
]


class StartRequester(Protocol):
    """What the handle needs of the start actor: a request that never waits."""

    def request(self, dispute_id: str) -> bool: ...


class EngineStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The engine as the live snapshot and `/health` show it.

    - `running`: the engine is attached (mediation ready, restart resume done).
    - `sessions_live`: Live sessions (MED-4) at the last tick or resume; None before.
    - `sessions_with_keys`: of those, the ones whose chat keys are in memory (the chat
      pass reads them); the rest only the sweep can act on (MED-151).
    - `sessions_watched`: of those, the ones the live watch's filter names, whose answers
      are read as the relays deliver them (BEY-30); the rest wait for the chat pass.
    - `starts_in_flight`: start attempts running now; `start_requests_dropped`: new
      disputes the ingest could not hand over (queue full), left to the tick.
    - `ticks`, `last_tick_at`: completed ticks and the wall-clock second the last ended.
    - `stage_failures`: tick stages that failed since start (each logged, MED-70).
    - `solver_auth`: Serbero's standing as a Mostro solver as the opens see it
      (`authorized`; `unauthorized` while the retry loop waits, opens paused; `terminated`
      when it gave up); None while no engine runs.
    """

    running: bool
    sessions_live: int | None
    sessions_with_keys: int
    sessions_watched: int
    starts_in_flight: int
    start_requests_dropped: int
    ticks: int
    last_tick_at: int | None
    stage_failures: int
    solver_auth: str | None


class EngineFigures:
    """The engine's running figures; written by the engine only, read by the snapshot."""

    __slots__ = ("last_tick_at", "sessions_live", "stage_failures", "ticks")

    def __init__(self) -> None:
        self.sessions_live: int | None = None
        self.ticks = 0
        self.last_tick_at: int | None = None
        self.stage_failures = 0


def _none() -> int:
    return 0


def _unknown() -> str | None:
    return None


class MediationHandle:
    """Shared by ingest (requests), the supervisor (status) and the engine (attach)."""

    def __init__(self) -> None:
        self._start: StartRequester | None = None
        self._figures = EngineFigures()
        self._in_flight: Callable[[], int] = _none
        self._with_keys: Callable[[], int] = _none
        self._watched: Callable[[], int] = _none
        self._solver_auth: Callable[[], str | None] = _unknown
        self._dropped = 0

    def request_start(self, dispute_id: str) -> bool:
        """MED-30: ask for an event-driven start of a new dispute without waiting. False
        when no engine runs or its queue is full; the tick covers the dispute then."""
        start = self._start
        if start is None:
            return False
        if start.request(dispute_id):
            return True
        self._dropped += 1
        return False

    def attach(
        self,
        start: StartRequester,
        figures: EngineFigures,
        *,
        in_flight: Callable[[], int],
        with_keys: Callable[[], int],
        watched: Callable[[], int] = _none,
        solver_auth: Callable[[], str | None] = _unknown,
    ) -> None:
        """The engine runs: requests reach `start`, the status reads the engine's figures."""
        self._start, self._figures = start, figures
        self._in_flight, self._with_keys, self._watched = in_flight, with_keys, watched
        self._solver_auth = solver_auth

    def detach(self) -> None:
        """The engine stopped: requests are no-ops again (a restarted engine re-attaches)."""
        self._start = None
        self._in_flight = self._with_keys = self._watched = _none
        self._solver_auth = _unknown

    def status(self) -> EngineStatus:
        figures = self._figures
        return EngineStatus(
            running=self._start is not None,
            sessions_live=figures.sessions_live,
            sessions_with_keys=self._with_keys(),
            sessions_watched=self._watched(),
            starts_in_flight=self._in_flight(),
            start_requests_dropped=self._dropped,
            ticks=figures.ticks,
            last_tick_at=figures.last_tick_at,
            stage_failures=figures.stage_failures,
            solver_auth=self._solver_auth(),
        )
