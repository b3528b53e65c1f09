"""Small helpers shared by the relay tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager

import trio

from serbero.actors.relay import RelayState, RelayTiming
from serbero.actors.relay_pool import RelayPool, open_relay_pool
from serbero.clock import WallClock
from serbero.protocol.event import Event, sign_event
from serbero.protocol.keys import Keys
from tests.support.clocks import FakeWallClock

# Real-time tests against local relays: reconnect in a blink so the suite stays quick. The
# rate-limit pause stays above one second: LocalRelay refills its tokens in whole seconds.
FAST = RelayTiming(
    backoff_first=0.05,
    backoff_cap=0.3,
    probe_interval=0.05,
    rate_limit_retry_delays=(1.3,),
    rate_limit_budget=8.0,
)
BASE_TIME = 1_700_000_000


def neutral_jitter(n: int) -> bytes:
    """Randomness whose 4-byte jitter draws are exactly the midpoint (factor 1.0); any other
    draw (subscription ids) stays random so ids never collide."""
    return b"\x80" + bytes(n - 1) if n == 4 else os.urandom(n)


def note(
    keys: Keys, content: str, *, created_at: int = BASE_TIME, tags: Sequence[Sequence[str]] = ()
) -> Event:
    """A signed kind-1 event."""
    return sign_event(keys, created_at=created_at, kind=1, tags=tags, content=content)


def pool_for(
    *urls: str,
    keys: Keys | None = None,
    timing: RelayTiming | None = None,
    wall_clock: WallClock | None = None,
    state_changes: trio.MemorySendChannel[RelayState] | None = None,
) -> AbstractAsyncContextManager[RelayPool]:
    return open_relay_pool(
        list(urls),
        keys or Keys.generate(),
        wall_clock=wall_clock or FakeWallClock(BASE_TIME),
        timing=timing,
        rand=neutral_jitter,
        state_changes=state_changes,
    )


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: every connect is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
