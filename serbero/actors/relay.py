"""One connection actor per relay URL: connect, subscribe, publish, authenticate, stay alive.

The actor never gives up on its relay (BEY-7): it reconnects forever with capped, jittered
exponential backoff, re-sends every live subscription after each reconnect (with `since` moved
to the last event it saw minus a skew) and after a `CLOSED`, answers NIP-42 challenges with
Serbero's key (BEY-8, PROTO-21..23) and pings every 30 s, dropping a link whose pong does not
come back within 10 s (BEY-9).

Relays serve only their newest N stored events per REQ (LocalRelay 500; strfry and
nostr-rs-relay have caps of their own), so after the stored events of every live
(re)subscription the actor pages backwards until it reaches `since` (`_CatchUp`): at start-up
and after each reconnect, a gap longer than one REQ's worth is replayed in full, not cut at N.

It talks through channels: commands in (subscribe, unsubscribe), raw but shape-checked events
out to the pool's intake (which verifies and de-duplicates them once for all relays), and
`RelayState` snapshots out whenever its link changes. Publishing is the one exception:
`publish` writes the EVENT on the live link from the caller's own task, so a DM goes out the
moment it is built instead of after a hand-off to the actor and a turn of the scheduler; the
OK still comes back through the actor's reader. Bad frames from a relay are logged and
skipped; they never end the actor.
"""

from __future__ import annotations

import enum
import os
import ssl
from collections import deque
from collections.abc import Callable
from typing import Final

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from serbero.actors.oneshot import OneShot
from serbero.clock import WallClock
from serbero.log import get_logger
from serbero.protocol.event import Event, EventError
from serbero.protocol.keys import Keys
from serbero.protocol.messages import (
    MAX_FRAME_BYTES,
    Filter,
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
]

log = get_logger("serbero.relay")

# --- timing defaults (BEY-7, BEY-9, PROTO-20, PROTO-21); RelayTiming overrides them in tests ---
CONNECT_TIMEOUT: Final = 10.0
# Closing a dead link waits this long for the close handshake before the socket is just dropped.
DISCONNECT_TIMEOUT: Final = 2.0
BACKOFF_FIRST: Final = 1.0
BACKOFF_CAP: Final = 60.0
BACKOFF_JITTER: Final = 0.2
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
# Pages (REQs with `until`) asked for after one live (re)subscription's stored events, at most:
# 50,000 events at LocalRelay's 500 per REQ, far beyond a Mostro's disputes in any outage; a
# catch-up that needs more logs `subscription_catchup_truncated` and goes on from there.
CATCHUP_MAX_PAGES: Final = 100
# After a `rate-limited:` answer nothing is sent to that relay for the next of these delays
# (growing while it keeps refusing); an event keeps being retried for at most the budget (BEY-3).
RATE_LIMIT_RETRY_DELAYS: Final = (2.0, 4.0, 8.0, 16.0, 30.0)
RATE_LIMIT_BUDGET: Final = 60.0

# Frames buffered by trio-websocket between its reader and ours; pongs queue behind them.
WS_MESSAGE_QUEUE: Final = 64
# When a writer finds the connection closed, our reader may still hold frames the relay sent
# before closing (events it will not serve again if it restarts empty): the link ends once they
# are read, or after this long (a stalled consumer must not hold the reconnect).
DRAIN_TIMEOUT: Final = 2.0
WS_RECEIVE_BUFFER: Final = 64 * 1024
# A relay's free text (NOTICE, CLOSED, error reasons) is cut to this length in logs.
LOG_TEXT_LIMIT: Final = 200
_JITTER_DRAW_BYTES: Final = 4


class RelayTiming(msgspec.Struct, frozen=True):
    """Every delay the relay actors use; defaults are the module constants above."""

    connect_timeout: float = CONNECT_TIMEOUT
    disconnect_timeout: float = DISCONNECT_TIMEOUT
    backoff_first: float = BACKOFF_FIRST
    backoff_cap: float = BACKOFF_CAP
    backoff_jitter: float = BACKOFF_JITTER
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


def backoff_delay(attempt: int, timing: RelayTiming, rand: Callable[[int], bytes]) -> float:
    """Delay before reconnect number `attempt` (0-based): first, doubling, jittered, capped."""
    base = timing.backoff_first * 2.0 ** min(attempt, 32)
    return min(timing.backoff_cap, base * jitter_factor(timing.backoff_jitter, rand))


def _clip(text: str) -> str:
    return text if len(text) <= LOG_TEXT_LIMIT else text[:LOG_TEXT_LIMIT] + "…"


# --- what the actor exchanges with the pool --------------------------------------------------


class RelayState(msgspec.Struct, frozen=True):
    """An observable snapshot of one relay link (logs now, the health endpoint later).

    `since` is the wall-clock second of the last change; `reconnect_attempts` counts reconnects
    scheduled since the last successful connection; `last_error` is why the link last went
    down (kept while connected again, so the health record can show it).
    """

    url: str
    connected: bool
    since: int
    last_error: str | None = None
    reconnect_attempts: int = 0
    authenticated: bool = False


class PublishStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    NOT_CONNECTED = "not_connected"


class RelayPublishOutcome(msgspec.Struct, frozen=True):
    """One relay's answer to one publish; `message` is the relay's OK text or our reason."""

    relay: str
    status: PublishStatus
    message: str = ""

    @property
    def accepted(self) -> bool:
        """BEY-1: `OK true` and `duplicate:` both mean the relay holds the event."""
        return self.status in (PublishStatus.ACCEPTED, PublishStatus.DUPLICATE)


class SubscribeCommand(msgspec.Struct, frozen=True, tag=True):
    """Open (or replace) a subscription. `once` marks a fetch: ended by EOSE/CLOSED, never
    re-sent. `resume_skew=None` re-sends the filter unchanged (gift wraps: their `created_at`
    is randomised, PROTO-5, so moving `since` would lose them)."""

    sub_id: str
    name: str
    filter: Filter
    resume_skew: int | None = RESUME_SKEW
    once: bool = False


class UnsubscribeCommand(msgspec.Struct, frozen=True, tag=True):
    sub_id: str


Command = SubscribeCommand | UnsubscribeCommand


class InboundEvent(msgspec.Struct, frozen=True):
    """An event as a relay sent it: shape-checked, not yet verified or de-duplicated."""

    relay: str
    sub_id: str
    event: Event


class InboundEnd(msgspec.Struct, frozen=True):
    """A fetch subscription is over on this relay (EOSE, CLOSED, not connected, link lost)."""

    relay: str
    sub_id: str
    reason: str
    connected: bool = True


InboundItem = InboundEvent | InboundEnd

NOT_CONNECTED_REASON: Final = "not connected"
LINK_LOST_REASON: Final = "connection lost before OK"


def _outcome_from_ok(relay: str, ok: RelayOk) -> RelayPublishOutcome:
    prefix = message_prefix(ok.message)
    if prefix == "duplicate":
        status = PublishStatus.DUPLICATE
    elif ok.accepted:
        status = PublishStatus.ACCEPTED
    elif prefix == "rate-limited":
        status = PublishStatus.RATE_LIMITED
    else:
        status = PublishStatus.REJECTED
    return RelayPublishOutcome(relay, status, ok.message)


# --- per-connection bookkeeping ----------------------------------------------------------------


class _SubStatus(enum.Enum):
    IDLE = "idle"  # known, not sent on the current link
    ACTIVE = "active"  # REQ sent and not closed
    CLOSED = "closed"  # CLOSED by the relay; a resend is scheduled or waits for AUTH


class _CatchUp:
    """The replay of one live (re)subscription on one link: its stored events, then pages.

    A relay answers a REQ with its newest N matching events only, so the stored batch may stop
    short of `since`. After its EOSE the actor asks for the same filter with `until` = the
    oldest `created_at` received (inclusive, so events sharing that second are not skipped),
    under a subscription id of its own, and again after each page, until a page brings no event
    this catch-up has not seen, or reaches `since`, or CATCHUP_MAX_PAGES were asked for.

    Only the ids at the boundary second are remembered: everything older is new by
    construction. Limitation: when more than N events share one second, every page at that
    second brings the same N, and the rest cannot be reached on that relay.

    The newest `created_at` seen meanwhile is held back here and becomes the subscription's
    resume point only once the catch-up is over: a link lost halfway re-sends the old `since`,
    so the part not yet paged is asked for again rather than skipped.
    """

    __slots__ = (
        "boundary",
        "closed_attempts",
        "events",
        "filter",
        "fresh",
        "newest",
        "oldest",
        "oldest_ids",
        "page_id",
        "paged_events",
        "pages",
        "paging",
        "until",
    )

    def __init__(self, flt: Filter) -> None:
        self.filter = flt
        # False while the stored batch of the live REQ comes in; True from its EOSE on.
        self.paging = False
        # The page in flight (None between pages) and the `until` it asked for.
        self.page_id: str | None = None
        self.until: int | None = None
        # Ids received at second `until`, by the batch or any earlier page.
        self.boundary: set[str] = set()
        # The current batch or page: its unseen events, the oldest second and ids there.
        self.fresh = 0
        self.oldest: int | None = None
        self.oldest_ids: set[str] = set()
        self.pages = 0
        self.events = 0
        self.paged_events = 0
        self.closed_attempts = 0
        self.newest: int | None = None

    def note(self, event: Event) -> None:
        """Account for one event of the stored batch or of the page in flight."""
        created_at = event.created_at
        until = self.until
        if until is not None and (
            created_at > until or (created_at == until and event.id in self.boundary)
        ):
            return  # received earlier in this catch-up (or a relay ignoring `until`)
        self.fresh += 1
        self.events += 1
        if self.page_id is not None:
            self.paged_events += 1
        if self.oldest is None or created_at < self.oldest:
            self.oldest = created_at
            self.oldest_ids = {event.id}
        elif created_at == self.oldest:
            self.oldest_ids.add(event.id)

    def next_until(self) -> int | None:
        """The `until` of the next page, or None when the catch-up is complete."""
        since = self.filter.since
        if self.fresh == 0 or self.oldest is None:
            return None
        if since is not None and self.oldest <= since:
            return None
        return self.oldest

    def start_page(self, page_id: str, until: int) -> Filter:
        """Move the boundary to `until` and open a page there; returns its filter."""
        if until == self.until:
            self.boundary |= self.oldest_ids
        else:
            self.boundary = self.oldest_ids
        self.until = until
        self.page_id = page_id
        self.pages += 1
        self.fresh = 0
        self.oldest = None
        self.oldest_ids = set()
        return msgspec.structs.replace(self.filter, until=until)


class _Sub:
    """One subscription as this relay link sees it."""

    __slots__ = (
        "catchup",
        "closed_attempts",
        "command",
        "generation",
        "newest_created_at",
        "sent_auth_epoch",
        "status",
    )

    def __init__(self, command: SubscribeCommand) -> None:
        self.command = command
        self.status = _SubStatus.IDLE
        # The resume point (`_filter_to_send`); moves only while no catch-up is running.
        self.newest_created_at: int | None = None
        self.catchup: _CatchUp | None = None
        self.closed_attempts = 0
        # Bumped on every REQ; a scheduled resend fires only if nothing was sent since.
        self.generation = 0
        self.sent_auth_epoch = 0

    def saw(self, created_at: int) -> None:
        """Track the newest event: held by a running catch-up, else the resume point."""
        catchup = self.catchup
        if catchup is not None:
            if catchup.newest is None or created_at > catchup.newest:
                catchup.newest = created_at
        elif self.newest_created_at is None or created_at > self.newest_created_at:
            self.newest_created_at = created_at

    def end_catchup(self) -> None:
        """The catch-up is over: what it saw becomes the resume point."""
        catchup, self.catchup = self.catchup, None
        if catchup is not None and catchup.newest is not None:
            self.saw(catchup.newest)


class _Publish:
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


class _Link:
    """State of one live WebSocket; a reconnect starts a fresh one (auth resets, PROTO-23)."""

    def __init__(self, ws: WebSocketConnection, nursery: trio.Nursery) -> None:
        self.ws = ws
        self.nursery = nursery
        self.drop_reason: str | None = None
        self.ok_waiters: dict[str, list[OneShot[RelayOk]]] = {}
        # Publishes awaiting their OK, by event id, and in send order for the expiry task
        # (one timeout for all, so send order is deadline order).
        self.publishes: dict[str, list[_Publish]] = {}
        self.publish_order: deque[_Publish] = deque()
        self.publish_sent = trio.Event()
        self.authenticated = trio.Event()
        # Incremented on each successful AUTH; a REQ sent in an older epoch may be re-sent at
        # once when it comes back `CLOSED auth-required:`.
        self.auth_epoch = 0
        # Catch-up pages in flight on this link, by their subscription id.
        self.pages: dict[str, _Sub] = {}

    def drop(self, reason: str) -> None:
        if self.drop_reason is None:
            self.drop_reason = reason
        self.nursery.cancel_scope.cancel()

    def found_closed(self, exc: ConnectionClosed) -> None:
        """A writer found the connection closed: the reader hands over the frames received
        before the close and then ends the link (within DRAIN_TIMEOUT)."""
        if self.drop_reason is None:
            self.drop_reason = _describe_close(exc)
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

    def track(self, publish: _Publish) -> None:
        """Wait for `publish`'s OK (before its frame goes out: the OK can be quick)."""
        self.publishes.setdefault(publish.event_id, []).append(publish)
        order = self.publish_order
        # Answered publishes leave the front here, so the queue stays as long as what is
        # really in flight (OKs come back roughly in send order).
        while order and order[0].reply.done:
            order.popleft()
        order.append(publish)
        self.publish_sent.set()

    def take_publishes(self, event_id: str) -> list[_Publish]:
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


def _describe_close(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    text = f"closed by relay ({reason.code} {reason.name})"
    if reason.reason:
        text += f": {_clip(reason.reason)}"
    return text


# --- the actor ---------------------------------------------------------------------------------


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
        self._subs: dict[str, _Sub] = {}
        self._link: _Link | None = None
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

    async def _publish_state(self, **changes: object) -> None:
        self._state = msgspec.structs.replace(self._state, since=self._wall_clock(), **changes)
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
            try:
                async with open_websocket_url(
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
            except ConnectionClosed as exc:
                reason = reason or _describe_close(exc)
            except HandshakeError as exc:
                # ConnectionTimeout / ConnectionRejected / DisconnectionTimeout, or a network
                # error during the handshake (chained as the cause). A failed closing handshake
                # after a drop keeps the drop's reason.
                cause = exc.__cause__ or exc
                reason = reason or f"{type(exc).__name__}: {_clip(str(cause)) or 'no detail'}"
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = reason or f"{type(exc).__name__}: {_clip(str(exc))}"
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

            delay = backoff_delay(self._attempt, timing, self._rand)
            self._attempt += 1
            await self._publish_state(
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
            )
            await trio.sleep(delay)

    async def _serve(self, ws: WebSocketConnection) -> str:
        """Run one connected session; returns why it ended."""
        link: _Link | None = None
        try:
            async with trio.open_nursery() as nursery:
                link = _Link(ws, nursery)
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
                sub.status = _SubStatus.IDLE
                sub.closed_attempts = 0
                # Unfinished: the next link re-sends the old `since` and replays it all.
                sub.catchup = None

    async def _keep_alive(self, link: _Link) -> None:
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
        sub = _Sub(command)
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
            if sub.status is _SubStatus.ACTIVE:
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
        link.track(_Publish(event.id, reply, frame, deadline))
        # A failed send drops the link, which answers every waiting publish.
        await link.send(frame)
        return await reply.wait()

    def _on_ok(self, link: _Link, ok: RelayOk) -> None:
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
                publish.reply.set(_outcome_from_ok(self.url, ok))

    async def _resend_after_auth(self, link: _Link, publish: _Publish) -> None:
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

    async def _expire_publishes(self, link: _Link) -> None:
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

    def _filter_to_send(self, sub: _Sub) -> Filter:
        """The filter with `since` moved to the newest event seen minus the skew (BEY-7)."""
        command = sub.command
        if command.resume_skew is None or sub.newest_created_at is None:
            return command.filter
        newest = min(sub.newest_created_at, self._wall_clock())
        resume = max(0, newest - command.resume_skew)
        if command.filter.since is not None and resume <= command.filter.since:
            return command.filter
        return msgspec.structs.replace(command.filter, since=resume)

    async def _send_req(self, link: _Link, sub: _Sub) -> None:
        if self._subs.get(sub.command.sub_id) is not sub:
            return  # unsubscribed while a resend loop was awaiting
        sub.generation += 1
        sub.sent_auth_epoch = link.auth_epoch
        sub.status = _SubStatus.ACTIVE
        flt = self._filter_to_send(sub)
        if not sub.command.once:
            # A REQ replaces the earlier one: its stored events start a new catch-up.
            await self._close_page(link, sub)
            sub.catchup = _CatchUp(flt)
        if await link.send(encode_req(sub.command.sub_id, flt)):
            log.info(
                "subscription_sent",
                relay=self.url,
                subscription=sub.command.name,
                subscription_id=sub.command.sub_id,
                since=flt.since,
            )

    async def _resend_later(self, link: _Link, sub: _Sub, generation: int, delay: float) -> None:
        await trio.sleep(delay)
        if sub.generation == generation:
            await self._send_req(link, sub)

    async def _on_closed(self, link: _Link, frame: RelayClosed) -> None:
        sub = self._subs.get(frame.sub_id)
        if sub is None:
            await self._on_page_closed(link, frame)
            return
        log.warning(
            "subscription_closed",
            relay=self.url,
            subscription=sub.command.name,
            message=_clip(frame.message),
        )
        sub.status = _SubStatus.CLOSED
        auth_required = message_prefix(frame.message) == "auth-required"
        if auth_required and sub.sent_auth_epoch < link.auth_epoch:
            # The REQ went out before our AUTH succeeded: the relay can serve it now.
            await self._send_req(link, sub)
            return
        if sub.command.once:
            if auth_required and not link.authenticated.is_set():
                # PROTO-23: a successful AUTH re-sends it; the fetch's timeout bounds the wait.
                return
            await self._end_fetch(frame.sub_id, _clip(frame.message))
            return
        # Re-send with backoff (BEY-7); a successful AUTH re-sends sooner (PROTO-23).
        delay = backoff_delay(sub.closed_attempts, self._timing, self._rand)
        sub.closed_attempts += 1
        link.nursery.start_soon(self._resend_later, link, sub, sub.generation, delay)

    # --- NIP-42 ----------------------------------------------------------------------------------

    async def _authenticate(self, link: _Link, challenge: str) -> None:
        """PROTO-21: answer with a signed kind 22242 event and wait for its OK."""
        try:
            auth = build_auth_event(
                self._keys,
                challenge=challenge,
                relay_url=self.url,
                created_at=self._wall_clock(),
            )
        except (EventError, FrameError) as exc:
            log.warning("relay_auth_failed", relay=self.url, reason=_clip(str(exc)))
            return
        ok = await link.send_and_await_ok(
            auth.id, encode_auth_message(auth), self._timing.auth_timeout
        )
        if ok is None or not ok.accepted:
            reason = "no OK for AUTH" if ok is None else _clip(ok.message)
            log.warning("relay_auth_failed", relay=self.url, reason=reason)
            # PROTO-21: fetches waiting for AUTH end here; live subscriptions keep their
            # backoff re-send (a later challenge may succeed).
            for sub_id, sub in list(self._subs.items()):
                if sub.command.once and sub.status is _SubStatus.CLOSED:
                    await self._end_fetch(sub_id, f"auth failed: {reason}")
            return
        link.auth_epoch += 1
        link.authenticated.set()
        log.info("relay_authenticated", relay=self.url)
        await self._publish_state(authenticated=True)
        for sub in list(self._subs.values()):
            if sub.status is _SubStatus.CLOSED:
                await self._send_req(link, sub)

    # --- inbound frames --------------------------------------------------------------------------

    async def _read_loop(self, link: _Link) -> None:
        while True:
            try:
                data = await link.ws.get_message()
            except ConnectionClosed as exc:
                link.drop(_describe_close(exc))
                return
            try:
                frame = decode_relay_frame(data)
            except (FrameError, RecursionError) as exc:
                # msgspec reports absurdly deep nesting ("[[[[…") as RecursionError.
                reason = _clip(str(exc)) if isinstance(exc, FrameError) else "nesting too deep"
                log.warning("relay_frame_malformed", relay=self.url, reason=reason)
                continue
            await self._on_frame(link, frame)

    async def _on_frame(
        self,
        link: _Link,
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
            log.debug("relay_notice", relay=self.url, message=_clip(frame.message))
        else:
            link.nursery.start_soon(self._authenticate, link, frame.challenge)

    async def _on_event(self, link: _Link, frame: RelayEvent) -> None:
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

    async def _on_eose(self, link: _Link, sub_id: str) -> None:
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

    async def _page_on(self, link: _Link, sub: _Sub) -> None:
        """After the stored batch or a page ended: ask for the next page, or finish."""
        catchup = sub.catchup
        assert catchup is not None
        until = catchup.next_until()
        if until is None:
            self._finish_catchup(sub)
        else:
            await self._request_page(link, sub, until)

    async def _request_page(self, link: _Link, sub: _Sub, until: int) -> None:
        catchup = sub.catchup
        assert catchup is not None
        if catchup.pages >= CATCHUP_MAX_PAGES:
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

    def _finish_catchup(self, sub: _Sub) -> None:
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

    async def _close_page(self, link: _Link, sub: _Sub) -> None:
        """Abandon the page in flight for `sub`, if any (re-sent or unsubscribed)."""
        catchup = sub.catchup
        if catchup is not None and catchup.page_id is not None:
            link.pages.pop(catchup.page_id, None)
            page_id, catchup.page_id = catchup.page_id, None
            await link.send(encode_close(page_id))

    async def _on_page_closed(self, link: _Link, frame: RelayClosed) -> None:
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
            message=_clip(frame.message),
        )
        delay = backoff_delay(catchup.closed_attempts, self._timing, self._rand)
        catchup.closed_attempts += 1
        link.nursery.start_soon(self._request_page_later, link, sub, catchup, delay)

    async def _request_page_later(
        self, link: _Link, sub: _Sub, catchup: _CatchUp, delay: float
    ) -> None:
        await trio.sleep(delay)
        # Unless the subscription was re-sent (a new catch-up) or dropped meanwhile.
        if sub.catchup is catchup and catchup.page_id is None and catchup.until is not None:
            await self._request_page(link, sub, catchup.until)

    async def _end_fetch(self, sub_id: str, reason: str) -> None:
        # Loops over a snapshot of the table may reach a fetch the pool already closed.
        if self._subs.pop(sub_id, None) is not None:
            await self._inbound.send(InboundEnd(self.url, sub_id, reason))
