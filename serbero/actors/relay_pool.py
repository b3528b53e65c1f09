"""The relay pool: one connection actor per relay URL, subscriptions and publishes fanned out,
events fanned in through a single intake that verifies each event once and de-duplicates by id
across relays (PROTO-9, PROTO-10).

Each subscription gets its own bounded channel rather than one shared stream: the dispute feed,
the take-flow replies and a chat fetch have different consumers, unsubscribing ends exactly one
stream, and nobody has to demultiplex. The channels are bounded on purpose: a consumer that
falls behind stalls the intake, which stalls the relay readers, which pushes back on the relays
(the design's "back-pressure is a feature"); nothing is dropped and memory stays flat. A
consumer stalled for longer than the keep-alive timeout lets pongs queue behind unread frames,
so the link is dropped and re-subscribed from the newest event seen: slower, never lossy.

Publishing waits for every relay's answer and reports each one; `PublishResult.sent` is True
only when at least one relay accepted (BEY-1). `rate-limited:` answers are retried after a
jittered delay within a bounded budget (BEY-3).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Final, TypeVar
from urllib.parse import urlsplit

import msgspec
import trio

from serbero.actors.relay import (
    RESUME_SKEW,
    Command,
    InboundEnd,
    InboundEvent,
    InboundItem,
    PublishStatus,
    RelayConnection,
    RelayPublishOutcome,
    RelayState,
    RelayTiming,
    SubscribeCommand,
    UnsubscribeCommand,
    jitter_factor,
)
from serbero.clock import WallClock, system_wall_clock
from serbero.log import get_logger
from serbero.protocol.event import Event, EventError, expiration_of, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import (
    Filter,
    filter_matches,
    new_subscription_id,
    normalize_relay_url,
)

__all__ = [
    "COMMAND_BUFFER",
    "DEDUP_CAPACITY",
    "FETCH_BUFFER",
    "INTAKE_BUFFER",
    "MAX_PUBLISHES_IN_FLIGHT",
    "SUBSCRIPTION_BUFFER",
    "EventIntake",
    "NoRelayConnectedError",
    "PublishResult",
    "ReceivedEvent",
    "RelayPool",
    "SeenIds",
    "Subscription",
    "open_relay_pool",
]

log = get_logger("serbero.relay")

_T = TypeVar("_T")

# PROTO-10 asks for at least 35,000 remembered ids; ~300 bytes each with their bookkeeping.
DEDUP_CAPACITY: Final = 40_000
# Commands queued per relay actor; a publish burst beyond this waits (back-pressure).
COMMAND_BUFFER: Final = 256
# Events queued between the relay readers and the intake.
INTAKE_BUFFER: Final = 512
# Events queued per live subscription before its consumer slows the intake down.
SUBSCRIPTION_BUFFER: Final = 1024
FETCH_BUFFER: Final = 256
STATE_BUFFER: Final = 64
# Publishes in flight at once (each one a pipelined EVENT on every relay).
MAX_PUBLISHES_IN_FLIGHT: Final = 1024
STILL_RATE_LIMITED: Final = "rate-limited: still paused when the retry budget ran out"
OUTSIDE_FILTER_REASON: Final = "does not match the subscription's filter"


class ReceivedEvent(msgspec.Struct, frozen=True):
    """A verified, unexpired, first-seen event, with the relay that delivered it first."""

    event: Event
    relay: str
    subscription: str


class PublishResult(msgspec.Struct, frozen=True):
    """Every relay's answer to one publish, in configured relay order."""

    event_id: str
    outcomes: tuple[RelayPublishOutcome, ...]

    @property
    def sent(self) -> bool:
        """BEY-1: sent means at least one relay answered `OK true` or `duplicate:`."""
        return any(outcome.accepted for outcome in self.outcomes)


class NoRelayConnectedError(Exception):
    """A fetch found no relay connected (PROTO-19: the only case in which a fetch fails)."""


class SeenIds:
    """Bounded LRU of event ids already delivered, and to which live subscriptions (PROTO-10).

    An id delivered to one subscription is suppressed there only: another subscription whose
    filter also matches still gets it (re-verified, since the copy may come from another
    relay). Ids we published ourselves are suppressed everywhere.
    """

    _OWN: Final = ()

    def __init__(self, capacity: int = DEDUP_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._own: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def mark_own(self, event_id: str) -> None:
        self._remember(event_id, self._OWN)
        self._own.add(event_id)

    def delivered(self, event_id: str, sub_id: str) -> bool:
        entry = self._entries.get(event_id)
        if entry is None:
            return False
        return event_id in self._own or sub_id in entry

    def record(self, event_id: str, sub_id: str) -> None:
        entry = self._entries.get(event_id, ())
        self._remember(event_id, (*entry, sub_id))

    def _remember(self, event_id: str, entry: tuple[str, ...]) -> None:
        self._entries[event_id] = entry
        self._entries.move_to_end(event_id)
        while len(self._entries) > self.capacity:
            evicted, _ = self._entries.popitem(last=False)
            self._own.discard(evicted)


class _LiveRoute(msgspec.Struct):
    sub_id: str
    name: str
    filter: Filter
    send: trio.MemorySendChannel[ReceivedEvent]


class _FetchRoute(msgspec.Struct):
    sub_id: str
    filter: Filter
    send: trio.MemorySendChannel[ReceivedEvent | InboundEnd]
    fetched: set[str]


class EventIntake:
    """The pool's inbound stage: verify once, drop expired, de-duplicate, route by sub id."""

    def __init__(self, *, wall_clock: WallClock, capacity: int = DEDUP_CAPACITY) -> None:
        self._wall_clock = wall_clock
        self.seen = SeenIds(capacity)
        self._routes: dict[str, _LiveRoute | _FetchRoute] = {}

    def open_live(
        self, sub_id: str, name: str, flt: Filter, buffer: int = SUBSCRIPTION_BUFFER
    ) -> trio.MemoryReceiveChannel[ReceivedEvent]:
        """Route a live subscription's events (first copies only) to a new channel."""
        send, recv = trio.open_memory_channel[ReceivedEvent](buffer)
        self._routes[sub_id] = _LiveRoute(sub_id, name, flt, send)
        return recv

    def open_fetch(
        self, sub_id: str, flt: Filter, buffer: int = FETCH_BUFFER
    ) -> trio.MemoryReceiveChannel[ReceivedEvent | InboundEnd]:
        """Route a fetch's events (seen or not) and its per-relay ends to a new channel."""
        send, recv = trio.open_memory_channel[ReceivedEvent | InboundEnd](buffer)
        self._routes[sub_id] = _FetchRoute(sub_id, flt, send, set())
        return recv

    def close(self, sub_id: str) -> None:
        """Stop routing `sub_id`; its channel ends (a blocked delivery is dropped)."""
        route = self._routes.pop(sub_id, None)
        if route is not None:
            route.send.close()

    async def run(self, inbound: trio.MemoryReceiveChannel[InboundItem]) -> None:
        async for item in inbound:
            await self.handle(item)

    async def handle(self, item: InboundItem) -> None:
        route = self._routes.get(item.sub_id)
        if route is None:
            return
        if isinstance(item, InboundEnd):
            if isinstance(route, _FetchRoute):
                await _deliver(route.send, item)
            return
        event_id = item.event.id
        if isinstance(route, _LiveRoute):
            # Copies from other relays stop here, before paying for a signature check.
            if self.seen.delivered(event_id, route.sub_id) or not self._acceptable(item, route):
                return
            self.seen.record(event_id, route.sub_id)
            await _deliver(route.send, ReceivedEvent(item.event, item.relay, route.name))
        else:
            # PROTO-19: a fetch returns events even when the live stream has seen them.
            if event_id in route.fetched or not self._acceptable(item, route):
                return
            route.fetched.add(event_id)
            await _deliver(route.send, ReceivedEvent(item.event, item.relay, "fetch"))

    def _acceptable(self, item: InboundEvent, route: _LiveRoute | _FetchRoute) -> bool:
        event = item.event
        if not filter_matches(route.filter, event):
            # CORE-24: a relay that ignores our filter (another author, another kind) must
            # not feed a handler what it did not ask for; checked first, it is the cheap test.
            log.warning(
                "invalid_event_discarded",
                relay=item.relay,
                event_id=event.id,
                reason=OUTSIDE_FILTER_REASON,
            )
            return False
        try:
            verify_event(event)
        except EventError as exc:
            log.warning(
                "invalid_event_discarded", relay=item.relay, event_id=event.id, reason=str(exc)
            )
            return False
        expiration = expiration_of(event)
        if expiration is not None and expiration < self._wall_clock():
            log.debug("expired_event_dropped", relay=item.relay, event_id=event.id)
            return False
        return True


async def _deliver(send: trio.MemorySendChannel[_T], item: _T) -> None:
    # The subscription or fetch may have ended while this item was on its way: nobody wants it.
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await send.send(item)


class Subscription:
    """A live subscription: iterate it (or `.events`) for `ReceivedEvent`s."""

    def __init__(
        self,
        sub_id: str,
        name: str,
        flt: Filter,
        events: trio.MemoryReceiveChannel[ReceivedEvent],
    ) -> None:
        self.id = sub_id
        self.name = name
        self.filter = flt
        self.events = events

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        return self.events.__aiter__()


class RelayPool:
    """Handle to the running pool; create it with `open_relay_pool`."""

    def __init__(
        self,
        urls: Sequence[str],
        keys: Keys,
        *,
        wall_clock: WallClock,
        timing: RelayTiming,
        rand: Callable[[int], bytes],
        state_changes: trio.MemorySendChannel[RelayState] | None,
    ) -> None:
        self.urls = tuple(urls)
        self._keys = keys
        self._wall_clock = wall_clock
        self._timing = timing
        self._rand = rand
        self._state_changes = state_changes
        self._intake = EventIntake(wall_clock=wall_clock)
        self._commands: dict[str, trio.MemorySendChannel[Command]] = {}
        self._connections: dict[str, RelayConnection] = {}
        now = wall_clock()
        self._states = {url: RelayState(url=url, connected=False, since=now) for url in self.urls}
        self._state_changed = trio.Event()
        # Links established so far, over every relay: a count, so no reconnect goes unseen
        # by a watcher that was busy when it happened.
        self._links_opened = 0
        self._outage = False
        self._publish_slots = trio.Semaphore(MAX_PUBLISHES_IN_FLIGHT)
        self._rate_gates = {url: _RateGate() for url in self.urls}

    def _start(self, nursery: trio.Nursery) -> None:
        inbound_send, inbound_recv = trio.open_memory_channel[InboundItem](INTAKE_BUFFER)
        states_send, states_recv = trio.open_memory_channel[RelayState](STATE_BUFFER)
        nursery.start_soon(self._intake.run, inbound_recv)
        nursery.start_soon(self._track_states, states_recv)
        for url in self.urls:
            commands_send, commands_recv = trio.open_memory_channel[Command](COMMAND_BUFFER)
            self._commands[url] = commands_send
            connection = RelayConnection(
                url,
                self._keys,
                commands=commands_recv,
                inbound=inbound_send.clone(),
                states=states_send.clone(),
                wall_clock=self._wall_clock,
                timing=self._timing,
                rand=self._rand,
            )
            self._connections[url] = connection
            nursery.start_soon(connection.run, name=f"relay {url}")

    # --- relay state ---------------------------------------------------------------------------

    def relay_states(self) -> dict[str, RelayState]:
        """A snapshot of every relay link, keyed by normalised URL."""
        return dict(self._states)

    def connected_count(self) -> int:
        return sum(state.connected for state in self._states.values())

    async def wait_connected(self, count: int = 1) -> None:
        """Return once at least `count` relays are connected (start-up, tests)."""
        while self.connected_count() < count:
            await self._state_changed.wait()

    def links_opened(self) -> int:
        """How many relay links have been established since the pool started."""
        return self._links_opened

    async def wait_link_opened(self, seen: int) -> int:
        """Return `links_opened()` once it is past `seen` (at once if it already is): a
        relay came (back) since the caller last looked."""
        while self._links_opened <= seen:
            await self._state_changed.wait()
        return self._links_opened

    async def _track_states(self, states: trio.MemoryReceiveChannel[RelayState]) -> None:
        async for state in states:
            previous = self._states.get(state.url)
            if state.connected and (previous is None or not previous.connected):
                self._links_opened += 1
            self._states[state.url] = state
            self._log_outage_change()
            self._state_changed.set()
            self._state_changed = trio.Event()
            self._forward_state(state)

    def _forward_state(self, state: RelayState) -> None:
        """Hand the change to the optional watcher without ever waiting for it: a stalled
        health reader must not stall relay links (`relay_states()` is always current)."""
        if self._state_changes is None:
            return
        try:
            self._state_changes.send_nowait(state)
        except trio.WouldBlock:
            log.debug("relay_state_change_dropped", relay=state.url)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._state_changes = None

    def _log_outage_change(self) -> None:
        connected = self.connected_count()
        if connected == 0:
            # Only once every relay has tried and failed: a start-up is not an outage.
            tried = all(state.last_error is not None for state in self._states.values())
            if tried and not self._outage:
                self._outage = True
                log.warning("degraded_all_relays_down", relay_count=len(self._states))
        elif self._outage:
            self._outage = False
            log.info("relays_recovered", connected=connected, relay_count=len(self._states))

    # --- subscriptions -------------------------------------------------------------------------

    async def subscribe(
        self, flt: Filter, *, name: str, resume_skew: int | None = RESUME_SKEW
    ) -> Subscription:
        """Open a live subscription on every relay, now and after every reconnect.

        `resume_skew` moves `since` on re-sends to the newest event seen minus that many
        seconds; pass None for gift-wrap filters, whose `created_at` is randomised (PROTO-5).
        """
        sub_id = new_subscription_id(self._rand)
        recv = self._intake.open_live(sub_id, name, flt)
        command = SubscribeCommand(sub_id, name, flt, resume_skew=resume_skew)
        for commands in self._commands.values():
            await commands.send(command)
        return Subscription(sub_id, name, flt, recv)

    async def unsubscribe(self, subscription: Subscription) -> None:
        """CLOSE it on every relay and end its event stream."""
        self._intake.close(subscription.id)
        for commands in self._commands.values():
            await commands.send(UnsubscribeCommand(subscription.id))

    async def fetch(self, flt: Filter, timeout: float) -> list[Event]:
        """PROTO-19: REQ on every connected relay, collect until each sent EOSE or CLOSED or
        `timeout` passed, CLOSE the rest. Raises NoRelayConnectedError when none is connected."""
        sub_id = new_subscription_id(self._rand)
        recv = self._intake.open_fetch(sub_id, flt)
        events: list[Event] = []
        waiting = set(self.urls)
        any_connected = False
        try:
            command = SubscribeCommand(sub_id, "fetch", flt, resume_skew=None, once=True)
            with trio.move_on_after(timeout):
                for commands in self._commands.values():
                    await commands.send(command)
                async for item in recv:
                    if isinstance(item, ReceivedEvent):
                        events.append(item.event)
                        continue
                    waiting.discard(item.relay)
                    any_connected = any_connected or item.connected
                    if not waiting:
                        break
            # A relay that never answered was connected when asked: only an explicit "not
            # connected" from every relay makes the fetch fail.
            any_connected = any_connected or bool(waiting)
        finally:
            self._intake.close(sub_id)
            recv.close()
            # CLOSE even when the caller is being cancelled; bounded, so a stuck actor
            # cannot hold the caller (its relay then ends the REQ at EOSE anyway).
            with trio.CancelScope(shield=True), trio.move_on_after(self._timing.ok_timeout):
                for commands in self._commands.values():
                    await commands.send(UnsubscribeCommand(sub_id))
        if not any_connected:
            raise NoRelayConnectedError("no relay connected")
        return events

    # --- publishing ----------------------------------------------------------------------------

    async def publish(self, event: Event) -> PublishResult:
        """Send `event` to every relay and wait for each answer (OK, timeout, not connected).

        The callers log the result (`dm_published`, `dm_refused`): the pool does not.
        """
        # PROTO-10: our own events never come back to us as news.
        self._intake.seen.mark_own(event.id)
        async with self._publish_slots:
            if len(self.urls) == 1:
                # One relay (the common set-up): no nursery, no extra task.
                url = self.urls[0]
                outcome = await self._publish_to(url, event)
                return PublishResult(event.id, (outcome,))
            outcomes: dict[str, RelayPublishOutcome] = {}
            async with trio.open_nursery() as nursery:
                for url in self.urls:
                    nursery.start_soon(self._publish_into, url, event, outcomes)
        return PublishResult(event.id, tuple(outcomes[url] for url in self.urls))

    async def _publish_into(
        self, url: str, event: Event, outcomes: dict[str, RelayPublishOutcome]
    ) -> None:
        outcomes[url] = await self._publish_to(url, event)

    async def _publish_to(self, url: str, event: Event) -> RelayPublishOutcome:
        """One relay's share of a publish: send, and while it answers `rate-limited:`, wait
        for its pause to end and send again, within the budget (BEY-3)."""
        gate = self._rate_gates[url]
        deadline = trio.current_time() + self._timing.rate_limit_budget
        outcome = RelayPublishOutcome(url, PublishStatus.RATE_LIMITED, STILL_RATE_LIMITED)
        while True:
            if not gate.is_open():
                with trio.move_on_at(deadline):
                    await gate.wait_open()
                if not gate.is_open():
                    break
            outcome = await self._connections[url].publish(event)
            if outcome.status is not PublishStatus.RATE_LIMITED:
                gate.clear()
                break
            delay = gate.pause(self._timing, self._rand)
            log.debug(
                "publish_rate_limited",
                relay=url,
                event_id=event.id,
                paused_seconds=round(delay, 3),
            )
            if gate.reopens_at() > deadline:
                break
        return outcome


class _RateGate:
    """Per-relay pause after `rate-limited:`. While paused nothing is published to that relay:
    relays that refuse a client who keeps knocking only extend its penalty by doing so."""

    def __init__(self) -> None:
        self._until = 0.0
        self._streak = 0

    def is_open(self) -> bool:
        return trio.current_time() >= self._until

    def reopens_at(self) -> float:
        return self._until

    async def wait_open(self) -> None:
        # The pause can be extended while we sleep, hence the loop.
        while not self.is_open():
            await trio.sleep_until(self._until)

    def pause(self, timing: RelayTiming, rand: Callable[[int], bytes]) -> float:
        """Start (or keep) a pause; answers from one burst escalate it only once."""
        now = trio.current_time()
        if now < self._until:
            return self._until - now
        delays = timing.rate_limit_retry_delays
        delay = delays[min(self._streak, len(delays) - 1)]
        delay *= jitter_factor(timing.backoff_jitter, rand)
        self._until = now + delay
        self._streak += 1
        return delay

    def clear(self) -> None:
        self._streak = 0


def _endpoint_key(url: str) -> str:
    """`wss://host` and `wss://host/` are one endpoint; the first spelling is kept for AUTH."""
    parts = urlsplit(url)
    if parts.path == "/" and not parts.query and not parts.fragment:
        return url[:-1]
    return url


@asynccontextmanager
async def open_relay_pool(
    urls: Sequence[str],
    keys: Keys,
    *,
    wall_clock: WallClock = system_wall_clock,
    timing: RelayTiming | None = None,
    rand: Callable[[int], bytes] = os.urandom,
    state_changes: trio.MemorySendChannel[RelayState] | None = None,
) -> AsyncIterator[RelayPool]:
    """Start one connection actor per distinct relay URL and yield the pool; leaving the block
    closes every link. URLs are normalised (PROTO-22), duplicates share one connection.

    `state_changes`, when given, receives every `RelayState` change; changes that find it
    full are dropped rather than waited for.
    """
    unique: dict[str, str] = {}
    for url in urls:
        normalized = normalize_relay_url(url)
        unique.setdefault(_endpoint_key(normalized), normalized)
    if not unique:
        raise ValueError("the relay pool needs at least one relay URL")
    pool = RelayPool(
        list(unique.values()),
        keys,
        wall_clock=wall_clock,
        timing=RelayTiming() if timing is None else timing,
        rand=rand,
        state_changes=state_changes,
    )
    async with trio.open_nursery() as nursery:
        pool._start(nursery)
        try:
            yield pool
        finally:
            nursery.cancel_scope.cancel()
