"""One DM to one solver over the relay pool: the delivery every sender uses (CORE-35..37, BEY-1).

The outbox sender and the escalation gate both reach solvers through a `Courier`, handed to
them at construction; tests hand them a scripted one instead. A delivery never raises for a
bad recipient or a refused publish: the outcome comes back as a `Delivery` carrying the exact
CORE-37 error text the caller records. A DM counts as delivered only when at least one relay
accepted it (BEY-1); each relay's answer goes to the log, the body never does.

Each DM names its `DmIdentity` and its wrap is derived from it (BEY-26): sent again, it is
the same event, which relays and clients drop as a duplicate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Final, Protocol

import msgspec

from serbero.actors.relay_pool import PublishResult, RelayPool
from serbero.config import SolverConfig
from serbero.log import get_logger
from serbero.protocol.keys import Keys
from serbero.protocol.wrap_seed import DmIdentity, SeededWrapper

__all__ = [
    "INVALID_PUBKEY_PREFIX",
    "SEND_FAILED_PREFIX",
    "SPARE_KEYS_PER_SOLVER",
    "SPARE_KEYS_TOTAL",
    "Courier",
    "Deliver",
    "Delivery",
    "DmIdentity",
    "PoolCourier",
]

log = get_logger("serbero.sender")

# CORE-37: the error text of a publish that no relay accepted.
SEND_FAILED_PREFIX: Final = "notification error: gift-wrap send failed: "
INVALID_PUBKEY_PREFIX: Final = "invalid pubkey: "
# One-time wrap keys are made ahead for the next outbox ids, while the sender is idle (each
# ~90 us of work off a DM's path). Which solver an id will go to is not known yet, so each
# id gets its conversation key with every configured solver: up to SPARE_KEYS_PER_SOLVER
# ids per configured solver (a burst of 512 disputes), and at most SPARE_KEYS_TOTAL
# conversation keys in all (~0.2 KB each): with two solvers 1,024 ids (512 disputes) are
# ready, with five 819 ids (163 disputes). In a 300-dispute burst, 512 keys a solver
# against 64 took the daemon from 0.61-0.63 to 0.55-0.59 ms of CPU a DM.
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


# One DM to one solver: (solver, body, which DM it is) -> outcome.
Deliver = Callable[[SolverConfig, str, DmIdentity], Awaitable[Delivery]]


class Courier(Protocol):
    """What a sender needs to reach solvers: `deliver` one DM, and `prepare_spare` to do
    some of the next DMs' key work while idle (False when there is nothing left to do)."""

    async def deliver(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery: ...

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
    """The daemon's `Courier`: gift-wraps a DM as `identity` (CORE-35) with inputs derived
    from `salt` and the DM's identity (BEY-26), and publishes it to every relay of `pool`
    (CORE-36). `prepare_spare` makes the one-time keys of the outbox ids after
    `outbox_ids_after` (and after every outbox id delivered since), with their conversation
    keys for the receivers in `spares_for` (the configured solvers' keys)."""

    def __init__(
        self,
        pool: RelayPool,
        identity: Keys,
        *,
        salt: bytes,
        spares_for: Collection[str] = (),
        outbox_ids_after: int = 0,
    ) -> None:
        self._pool = pool
        self._wrapper = SeededWrapper(identity, salt)
        self._receivers = tuple(spares_for)
        self._window = (
            min(SPARE_KEYS_PER_SOLVER * len(spares_for), SPARE_KEYS_TOTAL // len(spares_for))
            if spares_for
            else 0
        )
        # The highest outbox id seen; ids after it are the ones to prepare.
        self._horizon = outbox_ids_after
        self._next = outbox_ids_after + 1

    def prepare_spare(self) -> bool:
        """Prepare the next outbox id in the window; False when the window is full."""
        self._next = max(self._next, self._horizon + 1)
        if self._next > self._horizon + self._window:
            return False
        self._wrapper.prepare(self._next, self._receivers)
        self._next += 1
        return True

    async def deliver(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        """The rumor is dated `dm.created_at`; seal and wrap are back-dated from it (PROTO-5)."""
        if solver.pubkey_hex is None:
            error = solver.pubkey_error or f"{INVALID_PUBKEY_PREFIX}unparsable public key"
            log.debug("dm_not_attempted", solver=solver.pubkey, error=error)
            return Delivery(ok=False, error=error, retryable=False)
        if dm.scope == "outbox" and dm.number > self._horizon:
            self._horizon = dm.number
            # Keys of ids far behind belong to rows that were never sent (abandoned).
            self._wrapper.forget_below(dm.number - self._window)
        wrap = self._wrapper.private_dm(solver.pubkey_hex, body, dm)
        result = await self._pool.publish(wrap)
        outcomes = {outcome.relay: outcome.status.value for outcome in result.outcomes}
        if result.sent:
            log.debug("dm_published", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
            return Delivery(ok=True, error=None, retryable=True)
        reason = _refusal_reason(result)
        log.info("dm_refused", solver=solver.pubkey, wrap_id=wrap.id, outcomes=outcomes)
        return Delivery(ok=False, error=SEND_FAILED_PREFIX + reason, retryable=True)
