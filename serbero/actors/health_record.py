"""The health record: what `serbero status` reads about the running daemon (BEY-10).

Another process cannot ask the daemon anything, so the daemon leaves a record in its own
database: each relay's state, the last dispute event seen and a heartbeat. This actor
samples the daemon's in-memory figures every `HEALTH_POLL_SECONDS` and writes them through
the tracker when they changed, and at least every `HEARTBEAT_SECONDS` (the heartbeat
`serbero status` checks against its stale limit). Writing only on change keeps a quiet
daemon at one small transaction per heartbeat. It also reads the outbox depth for the live
snapshot.

A clean shutdown ends with `record_stop`: every relay down and `stopped_at` set, so
`serbero status` says "stopped" at once; the next start's first write clears it. A crash
writes nothing, and shows as a heartbeat going stale.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

import trio

from serbero.actors.ingest import IngestStats
from serbero.actors.relay import RelayState
from serbero.actors.tracker import Tracker
from serbero.actors.tracker_requests import CountOutboxPending, WriteHealth
from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.store.errors import StoreError
from serbero.store.health import (
    KEY_HEARTBEAT_AT,
    KEY_LAST_DISPUTE_EVENT_AT,
    KEY_LAST_DISPUTE_EVENT_ID,
    KEY_STARTED_AT,
    KEY_STOPPED_AT,
    RELAY_CONNECTED,
    RELAY_DISCONNECTED,
    RelayHealth,
)

__all__ = [
    "HEALTH_POLL_SECONDS",
    "HEARTBEAT_SECONDS",
    "HealthRecorder",
    "HealthStats",
    "relay_state_name",
]

log = get_logger("serbero.health")

HEALTH_POLL_SECONDS: Final = 1.0
# Well under `serbero status`'s stale limit (120 s), so one slow disk flush is no alarm.
HEARTBEAT_SECONDS: Final = 30.0


def relay_state_name(state: RelayState) -> str:
    """The state string stored for a relay (`serbero status` treats `connected` as up)."""
    return RELAY_CONNECTED if state.connected else RELAY_DISCONNECTED


class HealthStats:
    """The recorder's figures; written by the recorder only, read by the health snapshot."""

    __slots__ = ("outbox_pending",)

    def __init__(self) -> None:
        # Decided DMs still owed, as last counted; None until the first count.
        self.outbox_pending: int | None = None


class HealthRecorder:
    """The health-record actor; `run` samples and writes until cancelled."""

    def __init__(
        self,
        tracker: Tracker,
        relay_states: Callable[[], Mapping[str, RelayState]],
        ingest: IngestStats,
        *,
        started_at: int,
        wall_clock: WallClock,
        stats: HealthStats,
        poll_seconds: float = HEALTH_POLL_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._tracker = tracker
        self._relay_states = relay_states
        self._ingest = ingest
        self._started_at = started_at
        self._wall_clock = wall_clock
        self.stats = stats
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        self._written: tuple[object, ...] | None = None

    async def run(self) -> None:
        next_beat = trio.current_time()
        while True:
            if not self._tracker.outage.available:
                # The database takes no work (BEY-25): a write would only wait in the
                # tracker's queue behind the decisions; the record resumes when it clears.
                await trio.sleep(self._poll)
                continue
            if await self._flush(force=trio.current_time() >= next_beat):
                next_beat = trio.current_time() + self._heartbeat
            await self._count_outbox()
            await trio.sleep(self._poll)

    def _relays(self) -> tuple[RelayHealth, ...]:
        last_events = self._ingest.relay_last_event_at
        return tuple(
            RelayHealth(
                url=url,
                state=relay_state_name(state),
                last_change_at=state.since,
                last_event_at=last_events.get(url),
            )
            for url, state in sorted(self._relay_states().items())
        )

    async def _flush(self, *, force: bool) -> bool:
        """Write the record if it changed (or `force`); True when a write committed."""
        relays = self._relays()
        sample = (relays, self._ingest.last_event_id, self._ingest.last_event_at)
        if not force and sample == self._written:
            return False
        now = self._wall_clock()
        values = {KEY_HEARTBEAT_AT: str(now), KEY_STARTED_AT: str(self._started_at)}
        if self._ingest.last_event_id is not None and self._ingest.last_event_at is not None:
            values[KEY_LAST_DISPUTE_EVENT_ID] = self._ingest.last_event_id
            values[KEY_LAST_DISPUTE_EVENT_AT] = str(self._ingest.last_event_at)
        first = self._written is None
        request = WriteHealth(
            relays=relays,
            values=values,
            prune_relays=first,
            clear=(KEY_STOPPED_AT,) if first else (),
        )
        try:
            await self._tracker.ask(request)
        except StoreError as exc:
            log.warning("health_record_failed", error=str(exc))
            return False
        self._written = sample
        return True

    async def record_stop(self) -> None:
        """The clean shutdown's last word: no relay connected, `stopped_at` now."""
        now = self._wall_clock()
        relays = tuple(
            RelayHealth(url=relay.url, state=RELAY_DISCONNECTED, last_change_at=now)
            for relay in self._relays()
        )
        values = {KEY_HEARTBEAT_AT: str(now), KEY_STOPPED_AT: str(now)}
        try:
            await self._tracker.ask(WriteHealth(relays=relays, values=values))
        except StoreError as exc:
            log.warning("health_record_failed", error=str(exc))

    async def _count_outbox(self) -> None:
        try:
            self.stats.outbox_pending = await self._tracker.ask(CountOutboxPending())
        except StoreError as exc:
            log.debug("outbox_count_failed", error=str(exc))
