"""Every delay of a relay link, as module defaults and as the `RelayTiming` the actors take.

Tests pass a `RelayTiming` of their own (short backoffs against local relays, exact instants
under a virtual clock); production uses the defaults. Randomness is injected so jitter can be
made neutral in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

__all__ = [
    "AUTH_PUBLISH_WAIT",
    "AUTH_TIMEOUT",
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "BACKOFF_JITTER",
    "CONNECT_TIMEOUT",
    "DISCONNECT_TIMEOUT",
    "HEALTHY_AFTER",
    "OK_TIMEOUT",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "PROBE_INTERVAL",
    "PROBE_JITTER",
    "RATE_LIMIT_BUDGET",
    "RATE_LIMIT_RETRY_DELAYS",
    "RESUME_SKEW",
    "RelayTiming",
    "backoff_delay",
    "jitter_factor",
    "probe_delay",
]

# Defaults (BEY-7, BEY-9, PROTO-20, PROTO-21); a RelayTiming overrides them in tests.
CONNECT_TIMEOUT: Final = 10.0
# Closing a dead link waits this long for the close handshake before the socket is just dropped.
DISCONNECT_TIMEOUT: Final = 2.0
BACKOFF_FIRST: Final = 1.0
BACKOFF_CAP: Final = 60.0
BACKOFF_JITTER: Final = 0.2
# While a relay refuses TCP connections (nothing listens: stopped, restarting, host down) the
# next attempt comes this soon, whatever the outage's length: such an attempt is one TCP SYN
# the relay's kernel answers, so a return is noticed within ~2 s at a cost of ~30 connection
# attempts a minute. The backoff above is for relays that accept TCP and then fail.
PROBE_INTERVAL: Final = 2.0
PROBE_JITTER: Final = 0.1
# A link that stayed up this long was healthy: the next outage starts the backoff afresh
# (~1 s). Shorter links count as flaps and keep growing it, so a relay that accepts and
# soon closes is not hammered; only failed connection attempts lengthen one outage's retries.
HEALTHY_AFTER: Final = 10.0
PING_INTERVAL: Final = 30.0
PING_TIMEOUT: Final = 10.0
OK_TIMEOUT: Final = 10.0
AUTH_TIMEOUT: Final = 10.0
# PROTO-20 step 3: after an `auth-required:` OK, wait this long for AUTH to succeed, then resend.
AUTH_PUBLISH_WAIT: Final = 7.0
# Re-sent live subscriptions ask for events from this long before the newest one seen (CORE-20).
RESUME_SKEW: Final = 60
# After a `rate-limited:` answer nothing is sent to that relay for the next of these delays
# (growing while it keeps refusing); an event keeps being retried for at most the budget (BEY-3).
RATE_LIMIT_RETRY_DELAYS: Final = (2.0, 4.0, 8.0, 16.0, 30.0)
RATE_LIMIT_BUDGET: Final = 60.0
_JITTER_DRAW_BYTES: Final = 4


class RelayTiming(msgspec.Struct, frozen=True):
    """Every delay the relay actors use; defaults are the module constants above."""

    connect_timeout: float = CONNECT_TIMEOUT
    disconnect_timeout: float = DISCONNECT_TIMEOUT
    backoff_first: float = BACKOFF_FIRST
    backoff_cap: float = BACKOFF_CAP
    backoff_jitter: float = BACKOFF_JITTER
    probe_interval: float = PROBE_INTERVAL
    probe_jitter: float = PROBE_JITTER
    healthy_after: float = HEALTHY_AFTER
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT
    ok_timeout: float = OK_TIMEOUT
    auth_timeout: float = AUTH_TIMEOUT
    auth_publish_wait: float = AUTH_PUBLISH_WAIT
    rate_limit_retry_delays: tuple[float, ...] = RATE_LIMIT_RETRY_DELAYS
    rate_limit_budget: float = RATE_LIMIT_BUDGET

    def __post_init__(self) -> None:
        if not self.rate_limit_retry_delays:
            raise ValueError("rate_limit_retry_delays needs at least one delay")


def jitter_factor(jitter: float, rand: Callable[[int], bytes]) -> float:
    """A factor uniform in [1 - jitter, 1 + jitter), drawn from injected randomness."""
    unit = int.from_bytes(rand(_JITTER_DRAW_BYTES), "big") / (1 << (8 * _JITTER_DRAW_BYTES))
    return 1.0 + jitter * (2.0 * unit - 1.0)


def probe_delay(timing: RelayTiming, rand: Callable[[int], bytes]) -> float:
    """Delay before the next attempt on a relay that refused TCP: short, lightly jittered."""
    return timing.probe_interval * jitter_factor(timing.probe_jitter, rand)


def backoff_delay(attempt: int, timing: RelayTiming, rand: Callable[[int], bytes]) -> float:
    """Delay before reconnect number `attempt` (0-based): first, doubling, jittered, capped."""
    base = timing.backoff_first * 2.0 ** min(attempt, 32)
    return min(timing.backoff_cap, base * jitter_factor(timing.backoff_jitter, rand))
