"""One DM to one solver over the relay pool: the delivery every sender uses (CORE-35..37, BEY-1).

The outbox sender and the escalation gate both reach solvers through a `Courier`, handed to
them at construction; tests hand them a scripted one instead. A delivery never raises for a
bad recipient or a refused publish: the outcome comes back as a `Delivery` carrying the exact
CORE-37 error text the caller records. A DM counts as delivered only when at least one relay
accepted it (BEY-1); each relay's answer goes to the log, the body never does.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Collection
from typing import Final, Protocol

import msgspec

from serbero.actors.relay_pool import PublishResult, RelayPool
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.keys import Keys
from serbero.protocol.nip59 import GiftWrapper

__all__ = [
    "INVALID_PUBKEY_PREFIX",
    "SEND_FAILED_PREFIX",
    "SPARE_KEYS_PER_SOLVER",
    "SPARE_KEYS_TOTAL",
    "Courier",
    "Deliver",
    "Delivery",
    "PoolCourier",
]

log = get_logger("serbero.sender")

# CORE-37: the error text of a publish that no relay accepted.
SEND_FAILED_PREFIX: Final = "notification error: gift-wrap send failed: "
INVALID_PUBKEY_PREFIX: Final = "invalid pubkey: "
# One-time wrap keys kept ready per receiver, prepared while the sender is idle (each ~90 us
# of work off a DM's path), and the cap over all receivers (~0.5 KB a key: the full set for
# five solvers is ~1.2 MB and 0.24 s of CPU, spent after start-up and after each burst).
# Enough that a burst of 512 disputes pays for no key on its path: in a 300-dispute burst,
# 512 a solver against 64 took the daemon from 0.61-0.63 to 0.55-0.59 ms of CPU a DM.
SPARE_KEYS_PER_SOLVER: Final = 512
SPARE_KEYS_TOTAL: Final = 4096


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


# One DM to one solver: (solver, body, now) -> outcome; `now` is the rumor's `created_at`.
Deliver = Callable[[SolverConfig, str, int], Awaitable[Delivery]]


class Courier(Protocol):
    """What a sender needs to reach solvers: `deliver` one DM, and `prepare_spare` to do
    some of the next DMs' key work while idle (False when there is nothing left to do)."""

    async def deliver(self, solver: SolverConfig, body: str, now: int) -> Delivery: ...

    def prepare_spare(self) -> bool: ...


def _refusal_reason(result: PublishResult) -> str:
    """Every relay's answer in one line, e.g. `ws://a: rejected (blocked: spam)`."""
    if not result.outcomes:
        return "no relay configured"
    parts = []
    for outcome in result.outcomes:
        detail = f" ({outcome.message})" if outcome.message else ""
        parts.append(f"{outcome.relay}: {outcome.status.value}{detail}")
    return "; ".join(parts)


class PoolCourier:
    """The daemon's `Courier`: gift-wraps a DM as `identity` (CORE-35) and publishes it to
    every relay of `pool` (CORE-36). One-time wrap keys for the receivers in `spares_for`
    (the configured solvers' keys) are prepared by `prepare_spare`."""

    def __init__(
        self,
        pool: RelayPool,
        identity: Keys,
        *,
        spares_for: Collection[str] = (),
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._pool = pool
        spares = min(SPARE_KEYS_PER_SOLVER, SPARE_KEYS_TOTAL // max(1, len(spares_for)))
        self._wrapper = GiftWrapper(identity, spares_for=spares_for, spares=spares, rand=rand)

    def prepare_spare(self) -> bool:
        return self._wrapper.prepare_spare()

    async def deliver(self, solver: SolverConfig, body: str, now: int) -> Delivery:
        """Seal and wrap are back-dated from `now`, the rumor's `created_at` (PROTO-5)."""
        if solver.pubkey_hex is None:
            error = solver.pubkey_error or f"{INVALID_PUBKEY_PREFIX}unparsable public key"
            log.debug("dm_not_attempted", solver=solver.pubkey, error=error)
            return Delivery(ok=False, error=error, retryable=False)
        wrap = self._wrapper.private_dm(solver.pubkey_hex, body, now=now)
        result = await self._pool.publish(wrap)
        outcomes = {outcome.relay: outcome.status.value for outcome in result.outcomes}
        if result.sent:
            log.debug("dm_published", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
            return Delivery(ok=True, error=None, retryable=True)
        reason = _refusal_reason(result)
        log.info("dm_refused", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
        return Delivery(ok=False, error=SEND_FAILED_PREFIX + reason, retryable=True)
