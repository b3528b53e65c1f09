"""Small helpers shared by the relay tests."""

from __future__ import annotations

import os
from collections.abc import Sequence

from serbero.actors.relay import RelayTiming
from serbero.protocol.event import Event, sign_event
from serbero.protocol.keys import Keys

# Real-time tests against local relays: reconnect in a blink so the suite stays quick.
FAST = RelayTiming(backoff_first=0.05, backoff_cap=0.3, rate_limit_retry_delays=(0.3,) * 20)
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
