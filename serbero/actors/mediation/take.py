"""The take-flow with Mostro over the relay pool (PROTO-53, MED-60..63).

One long-lived subscription to the gift wraps addressed to Serbero, opened once before any
take is sent, serves every take: each reply is opened here and handed to the take waiting
for that dispute id. Replies about other disputes (a stale `cant-do` still on a relay,
MAS-6), from anyone but the Mostro node, or older than the request are ignored, so only
Mostro's answer about *this* dispute ends a take.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from typing import Final

import msgspec
import trio

from serbero.actors.relay_pool import RelayPool
from serbero.clock import WallClock, system_wall_clock
from serbero.log import get_logger
from serbero.protocol.chat import ChatError, ChatMaterial, derive_chat_material
from serbero.protocol.event import Event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter
from serbero.protocol.mostro import (
    MostroMessage,
    MostroMessageError,
    canonical_uuid,
    parse_mostro_message,
)
from serbero.protocol.nip59 import GIFT_WRAP_KIND, GiftWrapError, NotForMe, unwrap_gift
from serbero.protocol.take import (
    TAKE_TIMEOUT_ERROR,
    TakeRefused,
    TakeSkip,
    build_admin_take_dispute,
    match_take_reply,
    take_refusal_error,
)

__all__ = [
    "LOOK_BACK_SECONDS",
    "NOT_AUTHORIZED",
    "NOT_A_SOLVER_REASONS",
    "REPLY_SKEW_SECONDS",
    "TAKE_TIMEOUT_SECONDS",
    "TakeClient",
    "TakeFailed",
    "TakeResult",
]

log = get_logger("serbero.mediation")

# MED-5: the take waits this long for Mostro's answer.
TAKE_TIMEOUT_SECONDS: Final = 15.0
# MED-60, MED-100: gift and chat wraps are back-dated by up to two days: look back a week.
LOOK_BACK_SECONDS: Final = 7 * 24 * 3600
# A reply whose rumor is older than the request by more than this answers an earlier take
# (still on the relays from the look-back), not this one. Rumor times are Mostro's real clock.
REPLY_SKEW_SECONDS: Final = 60
# PROTO-55: how Mostro says the requester is not one of its solvers. `invalid_pubkey` is
# also its answer once the dispute was taken by anyone; only `not_authorized` is certain.
NOT_AUTHORIZED: Final = "not_authorized"
NOT_A_SOLVER_REASONS: Final = frozenset({NOT_AUTHORIZED, "invalid_pubkey"})
# Replies queued for one waiting take before later ones are dropped (it needs one).
_WAITER_BUFFER: Final = 16


class TakeResult(msgspec.Struct, frozen=True):
    """A successful take: both trade pubkeys and the chat material derived from them."""

    buyer_trade_pubkey: str
    seller_trade_pubkey: str
    material: ChatMaterial


class TakeFailed(Exception):
    """The take did not happen. `reason` is the MED-62/63 text; `refused` marks a `cant-do`
    Mostro sent about this dispute (BEY-15: final until a new dispute event), whose raw
    reason is `cant_do`."""

    def __init__(self, reason: str, *, refused: bool = False, cant_do: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused
        self.cant_do = cant_do

    @property
    def not_a_solver(self) -> bool:
        """Mostro refused because Serbero's key is not (or no longer) its solver (PROTO-55)."""
        return self.cant_do in NOT_A_SOLVER_REASONS


class _Waiter:
    __slots__ = ("dispute_id", "not_before", "send")

    def __init__(
        self, dispute_id: str, not_before: int, send: trio.MemorySendChannel[MostroMessage]
    ) -> None:
        self.dispute_id = dispute_id
        self.not_before = not_before
        self.send = send


class TakeClient:
    """Runs takes for the start actor: `await nursery.start(client.run)`, then `take()`."""

    def __init__(
        self,
        pool: RelayPool,
        keys: Keys,
        mostro_pubkey: str,
        *,
        wall_clock: WallClock = system_wall_clock,
        timeout: float = TAKE_TIMEOUT_SECONDS,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._pool = pool
        self._keys = keys
        self._mostro = mostro_pubkey.lower()
        self._wall_clock = wall_clock
        self._timeout = timeout
        self._rand = rand
        self._waiters: dict[str, list[_Waiter]] = {}
        self._subscribed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (MED-60), report started, then route replies until cancelled."""
        flt = Filter(
            kinds=[GIFT_WRAP_KIND],
            p=[self._keys.public_hex],
            since=self._wall_clock() - LOOK_BACK_SECONDS,
        )
        subscription = await self._pool.subscribe(flt, name="take-replies", resume_skew=None)
        try:
            self._subscribed.set()
            task_status.started()
            async for received in subscription:
                self._route(received.event)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self._pool.unsubscribe(subscription)

    async def take(self, dispute_id: str) -> TakeResult:
        """PROTO-53: send `admin-take-dispute`, wait for Mostro's answer about this dispute.

        Raises `TakeFailed`: refused (`cant-do`), timed out, not published, or trade keys
        that give no usable chat material (MED-63).
        """
        wanted = canonical_uuid(dispute_id)
        if wanted is None:
            raise TakeFailed(f"dispute id {dispute_id!r} is not a UUID")
        # The take timeout covers the wait for the reply subscription too: a client whose
        # subscription never opens fails the take instead of holding the caller forever.
        with trio.move_on_after(self._timeout):
            # PROTO-53: the reply subscription is open before the request goes out.
            await self._subscribed.wait()
            now = self._wall_clock()
            send, recv = trio.open_memory_channel[MostroMessage](_WAITER_BUFFER)
            waiter = _Waiter(wanted, now - REPLY_SKEW_SECONDS, send)
            self._waiters.setdefault(wanted, []).append(waiter)
            try:
                return await self._request_and_wait(dispute_id, now, recv)
            finally:
                self._forget(waiter)
                send.close()
        log.warning("take_timed_out", dispute_id=dispute_id)
        raise TakeFailed(TAKE_TIMEOUT_ERROR)

    async def _request_and_wait(
        self, dispute_id: str, now: int, replies: trio.MemoryReceiveChannel[MostroMessage]
    ) -> TakeResult:
        wrap = build_admin_take_dispute(
            self._keys, self._mostro, dispute_id, now=now, rand=self._rand
        )
        published = await self._pool.publish(wrap)
        if not published.sent:
            detail = "; ".join(f"{o.relay}: {o.status.value}" for o in published.outcomes)
            raise TakeFailed(f"no relay accepted admin-take-dispute: {detail}")
        log.info("take_requested", dispute_id=dispute_id, wrap_id=wrap.id)
        while True:
            message = await replies.receive()
            outcome = match_take_reply(message, mostro_pk=self._mostro, dispute_id=dispute_id)
            if isinstance(outcome, TakeSkip):
                log.debug("take_reply_skipped", dispute_id=dispute_id, reason=outcome.reason)
                continue
            if isinstance(outcome, TakeRefused):
                log.warning("take_refused", dispute_id=dispute_id, cant_do=outcome.reason)
                raise TakeFailed(
                    take_refusal_error(dispute_id, outcome.reason),
                    refused=True,
                    cant_do=outcome.reason,
                )
            info = outcome.info
            try:
                material = derive_chat_material(self._keys, info.buyer_pubkey, info.seller_pubkey)
            except ChatError as exc:
                log.warning("take_reply_unusable", dispute_id=dispute_id, error=str(exc))
                raise TakeFailed(f"admin-took-dispute for dispute {dispute_id}: {exc}") from None
            log.info("take_succeeded", dispute_id=dispute_id)
            return TakeResult(
                buyer_trade_pubkey=material.buyer_pubkey,
                seller_trade_pubkey=material.seller_pubkey,
                material=material,
            )

    def _forget(self, waiter: _Waiter) -> None:
        waiting = self._waiters.get(waiter.dispute_id, [])
        with suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            self._waiters.pop(waiter.dispute_id, None)

    def _route(self, wrap: Event) -> None:
        """Open one wrap and hand it to the takes waiting for its dispute; drop the rest."""
        try:
            message = parse_mostro_message(unwrap_gift(self._keys, wrap))
        except NotForMe:
            log.debug("take_reply_dropped", wrap_id=wrap.id, reason="not for this key")
            return
        except (GiftWrapError, MostroMessageError) as exc:
            log.warning("take_reply_dropped", wrap_id=wrap.id, reason=str(exc))
            return
        if message.sender.lower() != self._mostro:
            log.warning("take_reply_dropped", wrap_id=wrap.id, reason="not from the Mostro node")
            return
        dispute = canonical_uuid(message.id) if message.id is not None else None
        waiting = self._waiters.get(dispute, []) if dispute is not None else []
        for waiter in waiting:
            if message.rumor_created_at < waiter.not_before:
                log.debug("take_reply_skipped", dispute_id=dispute, reason="older than the request")
                continue
            try:
                waiter.send.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.debug("take_reply_skipped", dispute_id=dispute, reason="take already answered")
