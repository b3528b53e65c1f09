"""The catch-up of one live (re)subscription on one link: pure bookkeeping, no sockets.

Relays serve only their newest N stored events per REQ (LocalRelay 500; strfry and
nostr-rs-relay have caps of their own), so after the stored events of a live (re)subscription
the connection pages backwards with `until` until it reaches `since`: at start-up and after
each reconnect, a gap longer than one REQ's worth is replayed in full, not cut at N. `CatchUp`
decides every page; the connection actor only sends the REQs it asks for.
"""

from __future__ import annotations

from typing import Final

import msgspec

from serbero.protocol.event import Event
from serbero.protocol.messages import Filter

__all__ = ["CATCHUP_MAX_PAGES", "CatchUp"]

# Pages (REQs with `until`) asked for after one live (re)subscription's stored events, at most:
# 50,000 events at LocalRelay's 500 per REQ, far beyond a Mostro's disputes in any outage; a
# catch-up that needs more logs `subscription_catchup_truncated` and goes on from there.
CATCHUP_MAX_PAGES: Final = 100


class CatchUp:
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

    @property
    def out_of_pages(self) -> bool:
        """True once CATCHUP_MAX_PAGES pages were asked for: the catch-up stops there."""
        return self.pages >= CATCHUP_MAX_PAGES

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
