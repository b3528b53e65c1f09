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

from collections.abc import Awaitable, Callable, Sequence
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
# ~90 us of work off a DM's path): up to SPARE_KEYS_PER_SOLVER ids per configured solver (a
# burst of 512 disputes), at most SPARE_KEYS_TOTAL ids in all (~0.5 KB each). In a
# 300-dispute burst, 512 keys a solver against 64 took the daemon from 0.61-0.63 to
# 0.55-0.59 ms of CPU a DM.
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


class _UpcomingKeys:
    """Which outbox ids get their keys made ahead, and for whom.

    A decision queues one DM per configured solver, in config order, so consecutive ids go
    to the solvers in turn: the guess for an id follows the last id seen going out (or the
    last one in the database, at start). A wrong guess costs that DM one key agreement on
    its path (the one-time key itself does not depend on the receiver), and the ids after
    it are prepared again on the corrected guess.
    """

    def __init__(
        self,
        wrapper: SeededWrapper,
        solvers: Sequence[SolverConfig],
        last_id: int,
        last_solver: str | None,
    ) -> None:
        self._wrapper = wrapper
        self._keys = tuple(solver.pubkey_hex for solver in solvers)
        self._index = {solver.pubkey: i for i, solver in enumerate(solvers)}
        self._window = min(SPARE_KEYS_PER_SOLVER * len(solvers), SPARE_KEYS_TOTAL)
        # The highest outbox id seen; ids after it are the ones to prepare.
        self._horizon = last_id
        self._next = last_id + 1
        # An id known to go to the solver at an index: the guesses count on from there.
        last_index = self._index.get(last_solver) if last_solver is not None else None
        self._anchor = (last_id, len(solvers) - 1 if last_index is None else last_index)

    def _guess(self, outbox_id: int) -> str | None:
        anchor_id, anchor_index = self._anchor
        return self._keys[(anchor_index + outbox_id - anchor_id) % len(self._keys)]

    def prepare_next(self) -> bool:
        """Prepare the next id in the window; False when the window is full."""
        self._next = max(self._next, self._horizon + 1)
        if self._next > self._horizon + self._window:
            return False
        receiver = self._guess(self._next)
        # A solver whose key does not parse gets a row but never a wrap.
        if receiver is not None:
            self._wrapper.prepare(self._next, (receiver,))
        self._next += 1
        return True

    def going_out(self, outbox_id: int, solver_pubkey: str) -> None:
        """Row `outbox_id`, for `solver_pubkey` as configured, is being wrapped."""
        index = self._index.get(solver_pubkey)
        if index is not None and self._keys[index] != self._guess(outbox_id):
            self._anchor = (outbox_id, index)
            self._next = min(self._next, outbox_id + 1)
        if outbox_id > self._horizon:
            self._horizon = outbox_id
            # Keys of ids far behind belong to rows that were never sent (abandoned).
            self._wrapper.forget_below(outbox_id - self._window)


class PoolCourier:
    """The daemon's `Courier`: gift-wraps a DM as `identity` (CORE-35) with inputs derived
    from `salt` and the DM's identity (BEY-26), and publishes it to every relay of `pool`
    (CORE-36). `prepare_spare` makes the one-time keys of the outbox ids after
    `last_outbox_id` (whose row is for `last_outbox_solver`), each with its conversation
    key for the configured solver (`spares_for`) it will most likely go to."""

    def __init__(
        self,
        pool: RelayPool,
        identity: Keys,
        *,
        salt: bytes,
        spares_for: Sequence[SolverConfig] = (),
        last_outbox_id: int = 0,
        last_outbox_solver: str | None = None,
    ) -> None:
        self._pool = pool
        self._wrapper = SeededWrapper(identity, salt)
        self._upcoming = (
            _UpcomingKeys(self._wrapper, spares_for, last_outbox_id, last_outbox_solver)
            if spares_for
            else None
        )

    def prepare_spare(self) -> bool:
        return self._upcoming is not None and self._upcoming.prepare_next()

    async def deliver(self, solver: SolverConfig, body: str, dm: DmIdentity) -> Delivery:
        """The rumor is dated `dm.created_at`; seal and wrap are back-dated from it (PROTO-5)."""
        if solver.pubkey_hex is None:
            error = solver.pubkey_error or f"{INVALID_PUBKEY_PREFIX}unparsable public key"
            log.debug("dm_not_attempted", solver=solver.key, error=error)
            return Delivery(ok=False, error=error, retryable=False)
        if dm.scope == "outbox" and self._upcoming is not None:
            self._upcoming.going_out(dm.number, solver.pubkey)
        wrap = self._wrapper.private_dm(solver.pubkey_hex, body, dm)
        result = await self._pool.publish(wrap)
        outcomes = {outcome.relay: outcome.status.value for outcome in result.outcomes}
        if result.sent:
            log.debug("dm_published", solver=solver.key, wrap_id=wrap.id, outcomes=outcomes)
            return Delivery(ok=True, error=None, retryable=True)
        reason = _refusal_reason(result)
        log.info("dm_refused", solver=solver.key, wrap_id=wrap.id, outcomes=outcomes)
        return Delivery(ok=False, error=SEND_FAILED_PREFIX + reason, retryable=True)
