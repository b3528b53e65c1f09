"""The catch-up paging decisions, without sockets: a list of stored events stands in for a
relay that serves only its newest N matches per REQ, as LocalRelay, strfry and
nostr-rs-relay do."""

from __future__ import annotations

from collections.abc import Callable

from serbero.actors.relay.catchup import CATCHUP_MAX_PAGES, CatchUp
from serbero.actors.relay.subscription import SubscriptionState
from serbero.actors.relay.types import SubscribeCommand
from serbero.protocol.event import Event
from serbero.protocol.messages import Filter

Serve = Callable[[Filter], list[Event]]


def stored(*seconds: int) -> list[Event]:
    """One event per entry of `seconds`, each with an id of its own."""
    return [
        Event(
            id=f"{index:064x}",
            pubkey="a" * 64,
            created_at=created_at,
            kind=1,
            tags=[],
            content="",
            sig="b" * 128,
        )
        for index, created_at in enumerate(seconds)
    ]


def capped_relay(events: list[Event], cap: int) -> Serve:
    """A relay answering each REQ with its newest `cap` events within `since` / `until`."""

    def serve(flt: Filter) -> list[Event]:
        matching = [
            e
            for e in events
            if (flt.since is None or e.created_at >= flt.since)
            and (flt.until is None or e.created_at <= flt.until)
        ]
        matching.sort(key=lambda e: (e.created_at, e.id), reverse=True)
        return matching[:cap]

    return serve


def run_catchup(serve: Serve, flt: Filter) -> tuple[CatchUp, list[Filter], set[str]]:
    """Drive a catch-up as the connection does: stored batch, EOSE, then page after page.
    Returns it, the filters of the pages asked for, and the ids of every event it received."""
    catchup = CatchUp(flt)
    received: set[str] = set()
    for event in serve(flt):
        catchup.note(event)
        received.add(event.id)
    catchup.paging = True
    pages: list[Filter] = []
    while (until := catchup.next_until()) is not None and not catchup.out_of_pages:
        page = catchup.start_page(f"page-{len(pages)}", until)
        pages.append(page)
        for event in serve(page):
            catchup.note(event)
            received.add(event.id)
        catchup.page_id = None
    return catchup, pages, received


def test_a_gap_longer_than_one_req_is_replayed_in_full() -> None:
    events = stored(*range(1, 1201))
    catchup, pages, received = run_catchup(capped_relay(events, 500), Filter(kinds=[1], since=1))
    assert received == {e.id for e in events}
    # The stored batch brought 701..1200; pages at until=701 and until=202 brought the rest.
    assert [page.until for page in pages] == [701, 202]
    assert all(page.since == 1 and page.kinds == [1] for page in pages)
    assert catchup.events == 1200  # the boundary event each page repeats is not counted twice
    assert catchup.paged_events == 700


def test_no_page_when_the_stored_batch_reaches_since() -> None:
    events = stored(*range(100, 150))
    catchup, pages, received = run_catchup(capped_relay(events, 500), Filter(since=100))
    assert pages == []
    assert len(received) == 50
    assert catchup.paged_events == 0


def test_events_sharing_the_boundary_second_are_all_reached() -> None:
    """`until` is inclusive: a page repeats the boundary second, whose ids are remembered so
    the repeat does not count as progress, and the older events behind it still come."""
    events = stored(20, 20, 20, 10, 10, 10, 5, 5, 1)
    catchup, pages, received = run_catchup(capped_relay(events, 4), Filter())
    assert received == {e.id for e in events}
    assert catchup.events == len(events)
    # The batch ends inside second 10, the first page inside second 5; the last brings
    # nothing new and ends the catch-up.
    assert [page.until for page in pages] == [10, 5, 1]


def test_more_events_in_one_second_than_a_req_serves_ends_the_catchup() -> None:
    """The documented limit (N or more in one second): the same N come back at that second,
    so paging stops there instead of asking forever."""
    events = stored(*([50] * 8), 40, 30)
    catchup, pages, received = run_catchup(capped_relay(events, 5), Filter())
    assert catchup.next_until() is None
    assert [page.until for page in pages] == [50]
    assert len(received) == 5


def test_a_relay_that_ignores_until_ends_the_catchup_after_one_page() -> None:
    events = stored(*range(1, 21))
    newest_ten = capped_relay(events, 10)

    def ignoring_until(flt: Filter) -> list[Event]:
        return newest_ten(Filter(since=flt.since))

    catchup, pages, received = run_catchup(ignoring_until, Filter(since=1))
    assert len(pages) == 1
    assert len(received) == 10
    assert catchup.paged_events == 0


def test_paging_stops_at_the_page_cap() -> None:
    events = stored(*range(1, CATCHUP_MAX_PAGES + 50))
    catchup, pages, received = run_catchup(capped_relay(events, 2), Filter())
    assert len(pages) == CATCHUP_MAX_PAGES
    assert catchup.out_of_pages
    assert catchup.next_until() is not None  # more was there: the connection logs the cut
    assert len(received) == 2 + CATCHUP_MAX_PAGES  # each page brings one event not seen


def test_the_resume_point_moves_only_when_the_catchup_is_over() -> None:
    """A link lost halfway re-sends the old `since`, so the unpaged part is asked again."""
    command = SubscribeCommand(sub_id="s", name="disputes", filter=Filter(kinds=[38386]))
    sub = SubscriptionState(command)
    assert sub.filter_to_send(now=10_000) == command.filter  # nothing seen yet
    sub.catchup = CatchUp(command.filter)
    sub.saw(5_000)
    assert sub.filter_to_send(now=10_000) == command.filter  # held back by the catch-up
    sub.end_catchup()
    assert sub.filter_to_send(now=10_000).since == 5_000 - command.resume_skew


def test_the_resume_point_never_passes_now_nor_goes_back_before_since() -> None:
    command = SubscribeCommand(sub_id="s", name="d", filter=Filter(since=4_990))
    sub = SubscriptionState(command)
    sub.saw(9_000)  # dated in the future by a relay or an author
    assert sub.filter_to_send(now=6_000).since == 6_000 - command.resume_skew
    sub = SubscriptionState(command)
    sub.saw(5_000)
    assert sub.filter_to_send(now=6_000).since == 4_990  # the filter's own since is later


def test_gift_wrap_subscriptions_are_resent_unchanged() -> None:
    """resume_skew=None: randomised created_at (PROTO-5) must not move `since`."""
    command = SubscribeCommand(
        sub_id="s", name="dms", filter=Filter(kinds=[1059]), resume_skew=None
    )
    sub = SubscriptionState(command)
    sub.saw(5_000)
    assert sub.filter_to_send(now=6_000) == command.filter
