"""One live WebSocket to a relay and what waits on it: publishes awaiting their OK (answered
by the OK, by expiry, or by the link's end), AUTH answers, catch-up pages in flight."""

from __future__ import annotations

from collections import deque
from typing import Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from serbero.actors.oneshot import OneShot
from serbero.actors.relay.subscription import SubscriptionState
from serbero.actors.relay.types import RelayPublishOutcome, clip
from serbero.protocol.messages import RelayOk

__all__ = ["DRAIN_TIMEOUT", "Link", "PendingPublish", "describe_close"]

# When a writer finds the connection closed, our reader may still hold frames the relay sent
# before closing (events it will not serve again if it restarts empty): the link ends once they
# are read, or after this long (a stalled consumer must not hold the reconnect).
DRAIN_TIMEOUT: Final = 2.0


class PendingPublish:
    """One EVENT sent on a link and waiting for its OK. Answered by the reader when the OK
    comes, by the link's expiry task after `ok_timeout`, or with `LINK_LOST_REASON` when
    the link ends: no task and no cancel scope of its own (the common path costs nothing
    but the frame)."""

    __slots__ = ("deadline", "event_id", "frame", "reply", "resent")

    def __init__(
        self, event_id: str, reply: OneShot[RelayPublishOutcome], frame: bytes, deadline: float
    ) -> None:
        self.event_id = event_id
        self.reply = reply
        self.frame = frame
        self.deadline = deadline
        # PROTO-20: an `auth-required:` answer is followed by one resend after AUTH.
        self.resent = False


class Link:
    """State of one live WebSocket; a reconnect starts a fresh one (auth resets, PROTO-23)."""

    def __init__(self, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.nursery = nursery
        self.drop_reason: str | None = None
        self.ok_waiters: dict[str, list[OneShot[RelayOk]]] = {}
        # Publishes awaiting their OK, by event id, and in send order for the expiry task
        # (one timeout for all, so send order is deadline order).
        self.publishes: dict[str, list[PendingPublish]] = {}
        self.publish_order: deque[PendingPublish] = deque()
        self.publish_sent = trio.Event()
        self.authenticated = trio.Event()
        # Incremented on each successful AUTH; a REQ sent in an older epoch may be re-sent at
        # once when it comes back `CLOSED auth-required:`.
        self.auth_epoch = 0
        # Catch-up pages in flight on this link, by their subscription id.
        self.pages: dict[str, SubscriptionState] = {}

    def drop(self, reason: str) -> None:
        if self.drop_reason is None:
            self.drop_reason = reason
        self.nursery.cancel_scope.cancel()

    def found_closed(self, exc: ConnectionClosed) -> None:
        """A writer found the connection closed: the reader hands over the frames received
        before the close and then ends the link (within DRAIN_TIMEOUT)."""
        if self.drop_reason is None:
            self.drop_reason = describe_close(exc)
        scope = self.nursery.cancel_scope
        scope.deadline = min(scope.deadline, trio.current_time() + DRAIN_TIMEOUT)

    async def send(self, frame: bytes) -> bool:
        """Send one text frame; a failure ends the link (`found_closed`) and returns False."""
        try:
            await self.ws.send_message(frame.decode())
        except ConnectionClosed as exc:
            self.found_closed(exc)
            return False
        return True

    def watch_ok(self, event_id: str) -> OneShot[RelayOk]:
        waiter: OneShot[RelayOk] = OneShot()
        self.ok_waiters.setdefault(event_id, []).append(waiter)
        return waiter

    def unwatch_ok(self, event_id: str, waiter: OneShot[RelayOk]) -> None:
        waiters = self.ok_waiters.get(event_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self.ok_waiters[event_id]

    def deliver_ok(self, ok: RelayOk) -> bool:
        waiters = self.ok_waiters.pop(ok.event_id, None)
        if waiters is None:
            return False
        for waiter in waiters:
            waiter.set(ok)
        return True

    def track(self, publish: PendingPublish) -> None:
        """Wait for `publish`'s OK (before its frame goes out: the OK can be quick)."""
        self.publishes.setdefault(publish.event_id, []).append(publish)
        order = self.publish_order
        # Answered publishes leave the front here, so the queue stays as long as what is
        # really in flight (OKs come back roughly in send order).
        while order and order[0].reply.done:
            order.popleft()
        order.append(publish)
        self.publish_sent.set()

    def take_publishes(self, event_id: str) -> list[PendingPublish]:
        """The publishes an OK for `event_id` answers (none when nobody waits)."""
        return self.publishes.pop(event_id, [])

    def answer_all(self, outcome: RelayPublishOutcome) -> None:
        """Answer every publish still waiting (the link ended)."""
        for publishes in self.publishes.values():
            for publish in publishes:
                publish.reply.set(outcome)
        self.publishes.clear()
        self.publish_order.clear()

    async def send_and_await_ok(
        self, event_id: str, frame: bytes, timeout: float
    ) -> RelayOk | None:
        """Send a frame carrying `event_id` and wait for its OK; None when none came in time."""
        waiter = self.watch_ok(event_id)
        try:
            if await self.send(frame):
                with trio.move_on_after(timeout):
                    return await waiter.wait()
            return None
        finally:
            self.unwatch_ok(event_id, waiter)


def describe_close(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    text = f"closed by relay ({reason.code} {reason.name})"
    if reason.reason:
        text += f": {clip(reason.reason)}"
    return text
