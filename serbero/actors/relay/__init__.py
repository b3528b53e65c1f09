"""The relay links: one connection actor per relay URL, and what it exchanges with the pool.

`connection` holds the actor (connect, subscribe, publish, authenticate, stay alive);
`transport` the staged connect (TCP, TLS, handshake) that tells a relay refusing connections
from one failing after them; `link` the bookkeeping of one live WebSocket (publishes awaiting
their OK); `catchup` the paging that replays a gap longer than a relay serves for one REQ;
`subscription` each subscription's state on a link; `timing` every delay; `types` the
commands, events, states and publish outcomes that cross to the pool. The names below are
the package's public face; the pool and the rest of the daemon import from here.
"""

from serbero.actors.relay.catchup import CATCHUP_MAX_PAGES
from serbero.actors.relay.connection import RelayConnection
from serbero.actors.relay.timing import (
    AUTH_PUBLISH_WAIT,
    AUTH_TIMEOUT,
    BACKOFF_CAP,
    BACKOFF_FIRST,
    BACKOFF_JITTER,
    CONNECT_TIMEOUT,
    DISCONNECT_TIMEOUT,
    HEALTHY_AFTER,
    OK_TIMEOUT,
    PING_INTERVAL,
    PING_TIMEOUT,
    PROBE_INTERVAL,
    PROBE_JITTER,
    RATE_LIMIT_BUDGET,
    RATE_LIMIT_RETRY_DELAYS,
    RESUME_SKEW,
    RelayTiming,
    backoff_delay,
    jitter_factor,
    probe_delay,
)
from serbero.actors.relay.types import (
    Command,
    InboundEnd,
    InboundEvent,
    InboundItem,
    PublishStatus,
    RelayPublishOutcome,
    RelayState,
    SubscribeCommand,
    UnsubscribeCommand,
)

__all__ = [
    "AUTH_PUBLISH_WAIT",
    "AUTH_TIMEOUT",
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "BACKOFF_JITTER",
    "CATCHUP_MAX_PAGES",
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
    "Command",
    "InboundEnd",
    "InboundEvent",
    "InboundItem",
    "PublishStatus",
    "RelayConnection",
    "RelayPublishOutcome",
    "RelayState",
    "RelayTiming",
    "SubscribeCommand",
    "UnsubscribeCommand",
    "backoff_delay",
    "jitter_factor",
    "probe_delay",
]
