"""One connection actor per relay URL: connect, subscribe, publish, authenticate, stay alive.

The actor never gives up on its relay (BEY-7): it reconnects forever, every ~2 s while the
relay refuses TCP connections (so its return is noticed within seconds, however long it was
away) and with capped, jittered exponential backoff while it accepts them and then fails the
handshake or drops links soon after. It re-sends every live subscription after each
reconnect (with `since` moved to the last event it saw minus a skew) and after a `CLOSED`,
answers NIP-42 challenges with Serbero's key (BEY-8, PROTO-21..23) and pings every 30 s,
dropping a link whose pong does not come back within 10 s (BEY-9). After the stored events of
every live (re)subscription it pages backwards as `CatchUp` asks.

It talks through channels: commands in (subscribe, unsubscribe), raw but shape-checked events
out to the pool's intake (which verifies and de-duplicates them once for all relays), and
`RelayState` snapshots out whenever its link changes. Publishing is the one exception:
`publish` writes the EVENT on the live link from the caller's own task, so a DM goes out the
moment it is built instead of after a hand-off to the actor and a turn of the scheduler; the
OK still comes back through the actor's reader. Bad frames from a relay are logged and
skipped; they never end the actor.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Final

import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from serbero.actors.oneshot import OneShot
from serbero.actors.relay.catchup import CatchUp
from serbero.actors.relay.link import Link, PendingPublish, describe_close
from serbero.actors.relay.subscription import SubscriptionState, SubStatus
from serbero.actors.relay.timing import RelayTiming, backoff_delay, probe_delay
from serbero.actors.relay.transport import RelayUnreachable, open_relay_websocket
from serbero.actors.relay.types import (
    LINK_LOST_REASON,
    NOT_CONNECTED_REASON,
    Command,
    InboundEnd,
    InboundEvent,
    InboundItem,
    PublishStatus,
    RelayPublishOutcome,
    RelayState,
    SubscribeCommand,
    clip,
    outcome_from_ok,
)
from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.protocol.event import Event, EventError
from serbero.protocol.keys import Keys
from serbero.protocol.messages import (
    MAX_FRAME_BYTES,
    FrameError,
    RelayAuthChallenge,
    RelayClosed,
    RelayEose,
    RelayEvent,
    RelayNotice,
    RelayOk,
    build_auth_event,
    decode_relay_frame,
    encode_auth_message,
    encode_close,
    encode_event_message,
    encode_req,
    message_prefix,
    new_subscription_id,
)

__all__ = ["RelayConnection"]

log = get_logger("serbero.relay")

# Frames buffered by trio-websocket between its reader and ours; pongs queue behind them.
WS_MESSAGE_QUEUE: Final = 64
WS_RECEIVE_BUFFER: Final = 64 * 1024


class RelayConnection:
    """The actor for one relay URL. Run `run()` in a nursery; it returns only when cancelled."""

    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        commands: trio.MemoryReceiveChannel[Command],
        inbound: trio.MemorySendChannel[InboundItem],
        states: trio.MemorySendChannel[RelayState],
        wall_clock: WallClock,
        timing: RelayTiming,
        rand: Callable[[int], bytes] = os.urandom,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._keys = keys
        self._commands = commands
        self._inbound = inbound
        self._states = states
        self._wall_clock = wall_clock
        self._timing = timing
        self._rand = rand
        self._ssl_context = ssl_context
        self._subs: dict[str, SubscriptionState] = {}
        self._link: Link | None = None
        # Exponent of the next reconnect delay: the run of short-lived links before the last
        # drop, plus the failed attempts since it.
        self._attempt = 0
        self._short_links = 0
        self._state = RelayState(url=url, connected=False, since=wall_clock())

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._command_loop)
            await self._connect_loop()

    # --- state ---------------------------------------------------------------------------------

    async def _publish_state(self, *, keep_since: bool = False, **changes: object) -> None:
        since = self._state.since if keep_since else self._wall_clock()
        self._state = msgspec.structs.replace(self._state, since=since, **changes)
        await self._states.send(self._state)

    # --- reconnect loop --------------------------------------------------------------------------

    def _ssl_for_url(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss:"):
            return None
        if self._ssl_context is None:
            # The system trust store, as every TLS client on the host uses.
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _connect_loop(self) -> None:
        timing = self._timing
        while True:
            connected_at: float | None = None
            reason: str | None = None
            refused = False
            try:
                async with open_relay_websocket(
                    self.url,
                    ssl_context=self._ssl_for_url(),
                    connect_timeout=timing.connect_timeout,
                    disconnect_timeout=timing.disconnect_timeout,
                    max_message_size=MAX_FRAME_BYTES,
                    message_queue_size=WS_MESSAGE_QUEUE,
                    receive_buffer_size=WS_RECEIVE_BUFFER,
                ) as ws:
                    connected_at = trio.current_time()
                    reason = await self._serve(ws)
            except RelayUnreachable as exc:
                refused = True
                reason = clip(str(exc))
            except ConnectionClosed as exc:
                reason = reason or describe_close(exc)
            except HandshakeError as exc:
                # ConnectionTimeout / ConnectionRejected / DisconnectionTimeout, or a network
                # error during the handshake (chained as the cause). A failed closing handshake
                # after a drop keeps the drop's reason.
                cause = exc.__cause__ or exc
                reason = reason or f"{type(exc).__name__}: {clip(str(cause)) or 'no detail'}"
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = reason or f"{type(exc).__name__}: {clip(str(exc))}"
            reason = reason or "connection closed"

            if connected_at is not None:
                # BEY-7: the failed attempts of an earlier outage do not carry over; only a
                # run of short-lived links starts the next outage with a longer delay.
                if trio.current_time() - connected_at >= timing.healthy_after:
                    self._short_links = 0
                    self._attempt = 0
                else:
                    self._attempt = self._short_links
                    self._short_links += 1
                log.warning("relay_disconnected", relay=self.url, reason=reason)
            elif self._state.reconnect_attempts == 0:
                log.warning("relay_connect_failed", relay=self.url, reason=reason)
            else:
                # Still down: one warning per outage is enough, the rest is detail.
                log.debug("relay_connect_failed", relay=self.url, reason=reason)

            if refused:
                # Nothing listens: try again soon, and keep the backoff for failures of a
                # relay that does accept connections.
                delay = probe_delay(timing, self._rand)
            else:
                delay = backoff_delay(self._attempt, timing, self._rand)
                self._attempt += 1
            # A failed attempt during an outage (one every ~2 s while the relay refuses) is
            # no change of the link: `since` keeps the moment it went down.
            await self._publish_state(
                keep_since=connected_at is None,
                connected=False,
                last_error=reason,
                reconnect_attempts=self._state.reconnect_attempts + 1,
                authenticated=False,
            )
            log.debug(
                "relay_reconnect_scheduled",
                relay=self.url,
                delay_seconds=round(delay, 3),
                attempt=self._attempt,
                refused=refused,
            )
            await trio.sleep(delay)

    async def _serve(self, ws: WebSocketConnection) -> str:
        """Run one connected session; returns why it ended."""
        link: Link | None = None
        try:
            async with trio.open_nursery() as nursery:
                link = Link(ws, nursery)
                self._link = link
                try:
                    log.info("relay_connected", relay=self.url)
                    await self._publish_state(connected=True, reconnect_attempts=0)
                    nursery.start_soon(self._keep_alive, link)
                    nursery.start_soon(self._expire_publishes, link)
                    for sub in list(self._subs.values()):
                        if not sub.command.once:
                            await self._send_req(link, sub)
                    await self._read_loop(link)
                finally:
                    self._link = None
                    nursery.cancel_scope.cancel()
        finally:
            # Every task of the link has ended (cancelled included): nothing can start
            # waiting any more, so whatever still waits for an OK is answered now.
            if link is not None:
                link.answer_all(
                    RelayPublishOutcome(self.url, PublishStatus.NOT_CONNECTED, LINK_LOST_REASON)
                )
        await self._end_link()
        return link.drop_reason or "connection closed"

    async def _end_link(self) -> None:
        """Forget what belonged to the link: fetches end here, live subscriptions wait."""
        for sub_id, sub in list(self._subs.items()):
            if sub.command.once:
                await self._end_fetch(sub_id, "connection lost")
            else:
                sub.status = SubStatus.IDLE
                sub.closed_attempts = 0
                # Unfinished: the next link re-sends the old `since` and replays it all.
                sub.catchup = None

    async def _keep_alive(self, link: Link) -> None:
        timing = self._timing
        while True:
            await trio.sleep(timing.ping_interval)
            with trio.move_on_after(timing.ping_timeout) as scope:
                try:
                    await link.ws.ping()
                except ConnectionClosed as exc:
                    link.found_closed(exc)
                    return
            if scope.cancelled_caught:
                link.drop(f"no pong within {timing.ping_timeout:g} s")
                return

    # --- commands from the pool ----------------------------------------------------------------

    async def _command_loop(self) -> None:
        async for command in self._commands:
            if isinstance(command, SubscribeCommand):
                await self._subscribe(command)
            else:
                await self._unsubscribe(command.sub_id)

    async def _subscribe(self, command: SubscribeCommand) -> None:
        sub = SubscriptionState(command)
        self._subs[command.sub_id] = sub
        link = self._link
        if link is not None:
            await self._send_req(link, sub)
        elif command.once:
            del self._subs[command.sub_id]
            await self._inbound.send(
                InboundEnd(self.url, command.sub_id, NOT_CONNECTED_REASON, connected=False)
            )

    async def _unsubscribe(self, sub_id: str) -> None:
        sub = self._subs.pop(sub_id, None)
        link = self._link
        if sub is not None and link is not None:
            await self._close_page(link, sub)
            sub.catchup = None
            if sub.status is SubStatus.ACTIVE:
                await link.send(encode_close(sub_id))

    async def publish(self, event: Event) -> RelayPublishOutcome:
        """PROTO-20: send the EVENT on the live link now, from the caller's task, and wait for
        its answer: the relay's OK, `timed_out` after `ok_timeout`, or `not_connected` when
        there is no link or it ends first."""
        link = self._link
        if link is None:
            return RelayPublishOutcome(self.url, PublishStatus.NOT_CONNECTED, NOT_CONNECTED_REASON)
        reply: OneShot[RelayPublishOutcome] = OneShot()
        frame = encode_event_message(event)
        deadline = trio.current_time() + self._timing.ok_timeout
        # Tracked before the first await: a link that ends from here on answers it.
        link.track(PendingPublish(event.id, reply, frame, deadline))
        # A failed send drops the link, which answers every waiting publish.
        await link.send(frame)
        return await reply.wait()

    def _on_ok(self, link: Link, ok: RelayOk) -> None:
        publishes = link.take_publishes(ok.event_id)
        if not publishes:
            if not link.deliver_ok(ok):
                log.debug("relay_ok_unmatched", relay=self.url, event_id=ok.event_id)
            return
        auth_required = not ok.accepted and message_prefix(ok.message) == "auth-required"
        for publish in publishes:
            if auth_required and not publish.resent:
                link.nursery.start_soon(self._resend_after_auth, link, publish)
            else:
                publish.reply.set(outcome_from_ok(self.url, ok))

    async def _resend_after_auth(self, link: Link, publish: PendingPublish) -> None:
        """PROTO-20 step 3: wait for AUTH to succeed (bounded), then send the event once more."""
        try:
            with trio.move_on_after(self._timing.auth_publish_wait):
                await link.authenticated.wait()
            publish.resent = True
            publish.deadline = trio.current_time() + self._timing.ok_timeout
            link.track(publish)
        finally:
            if not publish.resent:
                # The link ended during the wait; it answers only what it tracks.
                publish.reply.set(
                    RelayPublishOutcome(self.url, PublishStatus.NOT_CONNECTED, LINK_LOST_REASON)
                )
        await link.send(publish.frame)

    async def _expire_publishes(self, link: Link) -> None:
        """Answer `timed_out` for every publish whose OK did not come within `ok_timeout`."""
        order = link.publish_order
        timeout = f"no OK within {self._timing.ok_timeout:g} s"
        while True:
            while order and order[0].reply.done:
                order.popleft()
            if not order:
                link.publish_sent = trio.Event()
                await link.publish_sent.wait()
                continue
            first = order[0]
            await trio.sleep_until(first.deadline)
            if order and order[0] is first:
                order.popleft()
            waiting = link.publishes.get(first.event_id)
            if waiting is not None and first in waiting:
                waiting.remove(first)
                if not waiting:
                    del link.publishes[first.event_id]
                first.reply.set(RelayPublishOutcome(self.url, PublishStatus.TIMED_OUT, timeout))

    # --- subscriptions ---------------------------------------------------------------------------

    async def _send_req(self, link: Link, sub: SubscriptionState) -> None:
        if self._subs.get(sub.command.sub_id) is not sub:
            return  # unsubscribed while a resend loop was awaiting
        sub.generation += 1
        sub.sent_auth_epoch = link.auth_epoch
        sub.status = SubStatus.ACTIVE
        flt = sub.filter_to_send(self._wall_clock())
        if not sub.command.once:
            # A REQ replaces the earlier one: its stored events start a new catch-up.
            await self._close_page(link, sub)
            sub.catchup = CatchUp(flt)
        if await link.send(encode_req(sub.command.sub_id, flt)):
            log.info(
                "subscription_sent",
                relay=self.url,
                subscription=sub.command.name,
                subscription_id=sub.command.sub_id,
                since=flt.since,
            )

    async def _resend_later(
        self, link: Link, sub: SubscriptionState, generation: int, delay: float
    ) -> None:
        await trio.sleep(delay)
        if sub.generation == generation:
            await self._send_req(link, sub)

    async def _on_closed(self, link: Link, frame: RelayClosed) -> None:
        sub = self._subs.get(frame.sub_id)
        if sub is None:
            await self._on_page_closed(link, frame)
            return
        log.warning(
            "subscription_closed",
            relay=self.url,
            subscription=sub.command.name,
            message=clip(frame.message),
        )
        sub.status = SubStatus.CLOSED
        auth_required = message_prefix(frame.message) == "auth-required"
        if auth_required and sub.sent_auth_epoch < link.auth_epoch:
            # The REQ went out before our AUTH succeeded: the relay can serve it now.
            await self._send_req(link, sub)
            return
        if sub.command.once:
            if auth_required and not link.authenticated.is_set():
                # PROTO-23: a successful AUTH re-sends it; the fetch's timeout bounds the wait.
                return
            await self._end_fetch(frame.sub_id, clip(frame.message))
            return
        # Re-send with backoff (BEY-7); a successful AUTH re-sends sooner (PROTO-23).
        delay = backoff_delay(sub.closed_attempts, self._timing, self._rand)
        sub.closed_attempts += 1
        link.nursery.start_soon(self._resend_later, link, sub, sub.generation, delay)

    # --- NIP-42 ----------------------------------------------------------------------------------

    async def _authenticate(self, link: Link, challenge: str) -> None:
        """PROTO-21: answer with a signed kind 22242 event and wait for its OK."""
        try:
            auth = build_auth_event(
                self._keys,
                challenge=challenge,
                relay_url=self.url,
                created_at=self._wall_clock(),
            )
        except (EventError, FrameError) as exc:
            log.warning("relay_auth_failed", relay=self.url, reason=clip(str(exc)))
            return
        ok = await link.send_and_await_ok(
            auth.id, encode_auth_message(auth), self._timing.auth_timeout
        )
        if ok is None or not ok.accepted:
            reason = "no OK for AUTH" if ok is None else clip(ok.message)
            log.warning("relay_auth_failed", relay=self.url, reason=reason)
            # PROTO-21: fetches waiting for AUTH end here; live subscriptions keep their
            # backoff re-send (a later challenge may succeed).
            for sub_id, sub in list(self._subs.items()):
                if sub.command.once and sub.status is SubStatus.CLOSED:
                    await self._end_fetch(sub_id, f"auth failed: {reason}")
            return
        link.auth_epoch += 1
        link.authenticated.set()
        log.info("relay_authenticated", relay=self.url)
        await self._publish_state(authenticated=True)
        for sub in list(self._subs.values()):
            if sub.status is SubStatus.CLOSED:
                await self._send_req(link, sub)

    # --- inbound frames --------------------------------------------------------------------------

    async def _read_loop(self, link: Link) -> None:
        while True:
            try:
                data = await link.ws.get_message()
            except ConnectionClosed as exc:
                link.drop(describe_close(exc))
                return
            try:
                frame = decode_relay_frame(data)
            except (FrameError, RecursionError) as exc:
                # msgspec reports absurdly deep nesting ("[[[[…") as RecursionError.
                reason = clip(str(exc)) if isinstance(exc, FrameError) else "nesting too deep"
                log.warning("relay_frame_malformed", relay=self.url, reason=reason)
                continue
            await self._on_frame(link, frame)

    async def _on_frame(
        self,
        link: Link,
        frame: RelayEvent | RelayOk | RelayEose | RelayClosed | RelayNotice | RelayAuthChallenge,
    ) -> None:
        if isinstance(frame, RelayEvent):
            await self._on_event(link, frame)
        elif isinstance(frame, RelayOk):
            self._on_ok(link, frame)
        elif isinstance(frame, RelayEose):
            await self._on_eose(link, frame.sub_id)
        elif isinstance(frame, RelayClosed):
            await self._on_closed(link, frame)
        elif isinstance(frame, RelayNotice):
            log.debug("relay_notice", relay=self.url, message=clip(frame.message))
        else:
            link.nursery.start_soon(self._authenticate, link, frame.challenge)

    async def _on_event(self, link: Link, frame: RelayEvent) -> None:
        sub = self._subs.get(frame.sub_id)
        if sub is not None:
            catchup = sub.catchup
            if catchup is not None and not catchup.paging:
                catchup.note(frame.event)
        else:
            # A catch-up page: its events belong to the live subscription it pages for.
            sub = link.pages.get(frame.sub_id)
            if sub is None or sub.catchup is None:
                return
            sub.catchup.note(frame.event)
        sub.saw(frame.event.created_at)
        await self._inbound.send(InboundEvent(self.url, sub.command.sub_id, frame.event))

    async def _on_eose(self, link: Link, sub_id: str) -> None:
        sub = self._subs.get(sub_id)
        if sub is None:
            page_of = link.pages.pop(sub_id, None)
            if page_of is not None and page_of.catchup is not None:
                await link.send(encode_close(sub_id))
                page_of.catchup.page_id = None
                page_of.catchup.closed_attempts = 0
                await self._page_on(link, page_of)
            return
        sub.closed_attempts = 0
        if sub.command.once:
            await self._end_fetch(sub_id, "eose")
            await link.send(encode_close(sub_id))
        elif sub.catchup is not None and not sub.catchup.paging:
            sub.catchup.paging = True
            await self._page_on(link, sub)

    # --- catch-up after a (re)subscription ------------------------------------------------------

    async def _page_on(self, link: Link, sub: SubscriptionState) -> None:
        """After the stored batch or a page ended: ask for the next page, or finish."""
        catchup = sub.catchup
        assert catchup is not None
        until = catchup.next_until()
        if until is None:
            self._finish_catchup(sub)
        else:
            await self._request_page(link, sub, until)

    async def _request_page(self, link: Link, sub: SubscriptionState, until: int) -> None:
        catchup = sub.catchup
        assert catchup is not None
        if catchup.out_of_pages:
            log.warning(
                "subscription_catchup_truncated",
                relay=self.url,
                subscription=sub.command.name,
                pages=catchup.pages,
                events=catchup.events,
                until=until,
                since=catchup.filter.since,
            )
            self._finish_catchup(sub)
            return
        page_id = new_subscription_id(self._rand)
        flt = catchup.start_page(page_id, until)
        link.pages[page_id] = sub
        await link.send(encode_req(page_id, flt))

    def _finish_catchup(self, sub: SubscriptionState) -> None:
        catchup = sub.catchup
        assert catchup is not None
        if catchup.paged_events:
            # The relay's per-REQ cap cut the stored events short: paging brought the rest.
            log.info(
                "subscription_caught_up",
                relay=self.url,
                subscription=sub.command.name,
                pages=catchup.pages,
                events=catchup.events,
            )
        sub.end_catchup()

    async def _close_page(self, link: Link, sub: SubscriptionState) -> None:
        """Abandon the page in flight for `sub`, if any (re-sent or unsubscribed)."""
        catchup = sub.catchup
        if catchup is not None and catchup.page_id is not None:
            link.pages.pop(catchup.page_id, None)
            page_id, catchup.page_id = catchup.page_id, None
            await link.send(encode_close(page_id))

    async def _on_page_closed(self, link: Link, frame: RelayClosed) -> None:
        """A relay refused a page: ask for it again with backoff (it counts toward the cap)."""
        sub = link.pages.pop(frame.sub_id, None)
        if sub is None or sub.catchup is None:
            return
        catchup = sub.catchup
        catchup.page_id = None
        log.warning(
            "subscription_closed",
            relay=self.url,
            subscription=sub.command.name,
            message=clip(frame.message),
        )
        delay = backoff_delay(catchup.closed_attempts, self._timing, self._rand)
        catchup.closed_attempts += 1
        link.nursery.start_soon(self._request_page_later, link, sub, catchup, delay)

    async def _request_page_later(
        self, link: Link, sub: SubscriptionState, catchup: CatchUp, delay: float
    ) -> None:
        await trio.sleep(delay)
        # Unless the subscription was re-sent (a new catch-up) or dropped meanwhile.
        if sub.catchup is catchup and catchup.page_id is None and catchup.until is not None:
            await self._request_page(link, sub, catchup.until)

    async def _end_fetch(self, sub_id: str, reason: str) -> None:
        # Loops over a snapshot of the table may reach a fetch the pool already closed.
        if self._subs.pop(sub_id, None) is not None:
            await self._inbound.send(InboundEnd(self.url, sub_id, reason))
