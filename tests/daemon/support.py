"""Shared helpers for the daemon tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from serbero.actors.relay import RelayTiming
from tests.relay.raw_relay import RawConnection, RawRelay, open_raw_relay

# Real-time relay timing for loopback tests: reconnect in a blink. The rate-limit pause
# stays above one second because LocalRelay refills its tokens in whole seconds.
FAST = RelayTiming(
    backoff_first=0.05,
    backoff_cap=0.3,
    rate_limit_retry_delays=(1.3,),
    rate_limit_budget=8.0,
)
REJECTION = "blocked: not today"


async def _reject_everything(conn: RawConnection) -> None:
    """A relay that answers every REQ with EOSE and every EVENT with `OK false`."""
    while True:
        frame = await conn.receive_json()
        if frame[0] == "REQ":
            await conn.send_json(["EOSE", frame[1]])
        elif frame[0] == "EVENT":
            await conn.send_json(["OK", frame[1]["id"], False, REJECTION])


@asynccontextmanager
async def open_rejecting_relay() -> AsyncIterator[RawRelay]:
    """BEY-1 harness: a loopback relay that stores nothing and refuses every publish."""
    async with open_raw_relay(_reject_everything) as relay:
        yield relay
