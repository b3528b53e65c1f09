"""The live watch: a party's answer is ingested the moment a relay forwards it.

The chat pass fetches every live session once per `[chat].inbound_fetch_interval_seconds`
(BEY-24), so an answer that arrives just after a pass would wait a whole interval before the
model sees it. The watch holds one live subscription whose filter names every cached
session's two shared pubkeys; each wrap it receives goes through `ChatActor.ingest_wrap` (the
pass's checks and store write) and, when it brought something new, on to the round engine at
once. A session the filter gains late (a renewal held back by the spacing, or sessions
resumed after a restart) is fetched once right after the renewal, for what a relay stored
before it took the filter. It is only a shortcut: what it misses (an answer sent while
a relay was reconnecting, a session beyond `MAX_WATCHED_KEYS`) is found by the next pass,
which still looks back as far as before (MED-100).

The filter asks for new events only (`limit` 0), so renewing it for a new session does not make
the relays send every stored message again; a relay that sends them anyway costs one store
read per stored message, never a second row. The replaced filter stays open a moment after
its successor was sent, so nothing the relay forwarded in between is dropped.
"""

from __future__ import annotations

from functools import partial
from typing import Final

import trio

from serbero.actors.mediation.chat import ChatActor, InboundBatch, ingest_and_hand_on
from serbero.actors.relay_pool import RelayPool, Subscription
from serbero.log import get_logger
from serbero.protocol.chat import CHAT_WRAP_KIND, Party
from serbero.protocol.event import Event
from serbero.protocol.messages import Filter

__all__ = [
    "MAX_WATCHED_KEYS",
    "RENEW_OVERLAP_SECONDS",
    "RENEW_SPACING_SECONDS",
    "ChatWatch",
]

log = get_logger("serbero.mediation")

# Renewals are at least this far apart: a burst of new sessions costs a few renewals, not one
# per session, while a session opened after a quiet spell is watched at once.
RENEW_SPACING_SECONDS: Final = 0.2
# A replaced filter stays open this long after its successor was sent, so an answer the relay
# forwarded on it before it took the new filter is not lost on the way; with the spacing
# above, at most four watch subscriptions are open at once.
RENEW_OVERLAP_SECONDS: Final = 0.6
# Pubkeys named in the one filter (two per session, about 66 bytes each in the REQ); relays
# commonly refuse messages over 128 KB. Sessions beyond it are left to the chat pass.
MAX_WATCHED_KEYS: Final = 1_000
# Closing a filter waits at most this long for the relay connections to take the CLOSE.
UNSUBSCRIBE_TIMEOUT_SECONDS: Final = 1.0


class ChatWatch:
    """Keeps the live subscription in step with the chat actor's sessions; start with
    `await nursery.start(watch.run, batches)`."""

    def __init__(self, pool: RelayPool, chat: ChatActor) -> None:
        self._pool = pool
        self._chat = chat
        self._open: set[Subscription] = set()
        # The newest subscription and the keys its filter names.
        self._current: Subscription | None = None
        self._watched: dict[str, tuple[str, Party]] = {}
        self.renewals = 0

    @property
    def watched_sessions(self) -> int:
        return len(self._watched) // 2

    async def run(
        self,
        batches: trio.MemorySendChannel[InboundBatch],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Renew the subscription when sessions gained keys (at most once per
        `RENEW_SPACING_SECONDS`), close it when none is left, and hand on every new answer,
        until cancelled. A session that ended keeps its keys in the filter until the next
        renewal: its messages are no longer stored, and renewing costs the relays a REQ."""
        # The sessions cached before the watch started (a restart) may have answers waiting.
        held = True
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    checked_at = trio.current_time()
                    keys = self._wanted()
                    if self._needs_renewal(keys):
                        await self._renew(nursery, keys, held, batches)
                    await self._chat.sessions_changed()
                    # A renewal held back by the spacing may come after an answer: catch up.
                    held = trio.current_time() < checked_at + RENEW_SPACING_SECONDS
                    await trio.sleep_until(checked_at + RENEW_SPACING_SECONDS)
        finally:
            with trio.CancelScope(shield=True):
                for subscription in tuple(self._open):
                    await self._close(subscription)

    def _needs_renewal(self, keys: dict[str, tuple[str, Party]]) -> bool:
        """A session the filter does not name, or a filter left open with no session."""
        return not keys.keys() <= self._watched.keys() or (self._current is not None and not keys)

    async def _renew(
        self,
        nursery: trio.Nursery,
        keys: dict[str, tuple[str, Party]],
        held: bool,
        batches: trio.MemorySendChannel[InboundBatch],
    ) -> None:
        """Open the filter for `keys` (none when empty), then retire the previous one."""
        renewed = await self._subscribe(keys) if keys else None
        if renewed is not None:
            nursery.start_soon(self._forward, renewed, keys, batches)
            if held:
                added = _sessions(keys) - _sessions(self._watched)
                nursery.start_soon(self._catch_up, added, batches)
        if self._current is not None:
            nursery.start_soon(self._close_later, self._current)
        self._current, self._watched = renewed, keys
        self.renewals += 1
        log.debug("chat_watch_renewed", sessions=self.watched_sessions, renewals=self.renewals)

    def _wanted(self) -> dict[str, tuple[str, Party]]:
        keys = self._chat.shared_keys()
        if len(keys) <= MAX_WATCHED_KEYS:
            return keys
        # Both keys of a session or neither: the first sessions cached stay watched.
        return dict(list(keys.items())[: MAX_WATCHED_KEYS - MAX_WATCHED_KEYS % 2])

    async def _subscribe(self, keys: dict[str, tuple[str, Party]]) -> Subscription:
        flt = Filter(kinds=[CHAT_WRAP_KIND], p=sorted(keys), limit=0)
        # Gift-wrap timestamps are randomised (PROTO-5): a resumed filter keeps no `since`.
        subscription = await self._pool.subscribe(flt, name="chat-watch", resume_skew=None)
        self._open.add(subscription)
        return subscription

    async def _close_later(self, subscription: Subscription) -> None:
        await trio.sleep(RENEW_OVERLAP_SECONDS)
        await self._close(subscription)

    async def _close(self, subscription: Subscription) -> None:
        if subscription not in self._open:
            return
        self._open.discard(subscription)
        with trio.move_on_after(UNSUBSCRIBE_TIMEOUT_SECONDS):
            await self._pool.unsubscribe(subscription)

    async def _catch_up(
        self, sessions: set[str], batches: trio.MemorySendChannel[InboundBatch]
    ) -> None:
        """One fetch for each session a held-back renewal added: an answer a relay stored
        before it took the filter was not forwarded on it. The fetch goes out after the
        REQ, so whatever it does not find, the filter does. A renewal made the moment a
        session got its keys needs none: its parties have not read the opening yet."""
        for session_id in sessions:
            read = partial(self._chat.ingest_once, session_id)
            await ingest_and_hand_on("watch", session_id, read, batches)

    async def _forward(
        self,
        subscription: Subscription,
        keys: dict[str, tuple[str, Party]],
        batches: trio.MemorySendChannel[InboundBatch],
    ) -> None:
        """Until the subscription closes: ingest each wrap for the session it names."""
        async for received in subscription:
            target = _addressee(received.event, keys)
            if target is not None:
                session_id, party = target
                ingest = partial(self._chat.ingest_wrap, session_id, party, received.event)
                await ingest_and_hand_on("watch", session_id, ingest, batches)


def _addressee(event: Event, keys: dict[str, tuple[str, Party]]) -> tuple[str, Party] | None:
    """The session and party whose shared key the wrap's `p` tag names."""
    for tag in event.tags:
        if len(tag) >= 2 and tag[0] == "p" and tag[1] in keys:
            return keys[tag[1]]
    return None


def _sessions(keys: dict[str, tuple[str, Party]]) -> set[str]:
    return {session_id for session_id, _ in keys.values()}
