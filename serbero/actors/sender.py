"""The sender: turns decided notifications into NIP-17 DMs and reports each outcome.

`deliver_dm` is the one way any actor sends one DM to one solver (core notifications here,
escalation DMs elsewhere). It never raises for a bad recipient or a refused publish: the
outcome comes back as a `Delivery` carrying the exact CORE-37 error text the caller records.
A DM counts as delivered only when at least one relay accepted it (BEY-1); each relay's
answer goes to the log, the body never does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import msgspec

from serbero.actors.relay_pool import PublishResult, RelayPool
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.keys import Keys
from serbero.protocol.nip59 import build_private_dm

__all__ = [
    "SEND_FAILED_PREFIX",
    "Delivery",
    "deliver_dm",
]

log = get_logger("serbero.sender")

# CORE-37: the error text of a publish that no relay accepted.
SEND_FAILED_PREFIX: Final = "notification error: gift-wrap send failed: "
INVALID_PUBKEY_PREFIX: Final = "invalid pubkey: "


class Delivery(msgspec.Struct, frozen=True):
    """One DM attempt's outcome.

    `error` is None when `ok`; otherwise the CORE-37 text: `invalid pubkey: <reason>` (no
    network attempt was made) or `notification error: gift-wrap send failed: <reason>`.
    `retryable` says whether trying again later can help: False for an unparsable key,
    True for publish failures (relays down, rate-limited, refusing).
    """

    ok: bool
    error: str | None
    retryable: bool


def _refusal_reason(result: PublishResult) -> str:
    """Every relay's answer in one line, e.g. `ws://a: rejected (blocked: spam)`."""
    if not result.outcomes:
        return "no relay configured"
    parts = []
    for outcome in result.outcomes:
        detail = f" ({outcome.message})" if outcome.message else ""
        parts.append(f"{outcome.relay}: {outcome.status.value}{detail}")
    return "; ".join(parts)


async def deliver_dm(
    pool: RelayPool,
    identity: Keys,
    solver: SolverConfig,
    body: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
) -> Delivery:
    """Gift-wrap `body` to `solver` (CORE-35) and publish it to every relay (CORE-36).

    `now` is the rumor's `created_at` (seal and wrap are back-dated from it, PROTO-5).
    """
    if solver.pubkey_hex is None:
        error = solver.pubkey_error or f"{INVALID_PUBKEY_PREFIX}unparsable public key"
        log.debug("dm_not_attempted", solver=solver.pubkey, error=error)
        return Delivery(ok=False, error=error, retryable=False)
    wrap = build_private_dm(identity, solver.pubkey_hex, body, now=now, rand=rand)
    result = await pool.publish(wrap)
    outcomes = {outcome.relay: outcome.status.value for outcome in result.outcomes}
    if result.sent:
        log.debug("dm_published", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
        return Delivery(ok=True, error=None, retryable=True)
    reason = _refusal_reason(result)
    log.info("dm_refused", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
    return Delivery(ok=False, error=SEND_FAILED_PREFIX + reason, retryable=True)
