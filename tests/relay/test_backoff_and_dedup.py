"""Pure parts of the relay pool: the reconnect schedule (BEY-7) and the dedup LRU (PROTO-10)."""

from __future__ import annotations

import os

import pytest

from serbero.actors.relay import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    BACKOFF_JITTER,
    RelayTiming,
    backoff_delay,
    jitter_factor,
)
from serbero.actors.relay_pool import DEDUP_CAPACITY, SeenIds
from tests.relay.helpers import neutral_jitter


def test_default_schedule_starts_near_one_second_doubles_and_caps_at_sixty() -> None:
    """BEY-7: first retry ≈1 s, doubling, cap 60 s (neutral jitter)."""
    timing = RelayTiming()
    delays = [backoff_delay(attempt, timing, neutral_jitter) for attempt in range(10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert (BACKOFF_FIRST, BACKOFF_CAP, BACKOFF_JITTER) == (1.0, 60.0, 0.2)


def test_jitter_stays_within_twenty_percent_and_never_exceeds_the_cap() -> None:
    timing = RelayTiming()
    for attempt in range(12):
        base = min(BACKOFF_FIRST * 2**attempt, BACKOFF_CAP)
        for _ in range(200):
            delay = backoff_delay(attempt, timing, os.urandom)
            assert delay <= BACKOFF_CAP
            assert base * 0.8 <= delay <= base * 1.2


@pytest.mark.parametrize(
    ("draw", "factor"),
    [(b"\x00\x00\x00\x00", 0.8), (b"\x80\x00\x00\x00", 1.0), (b"\xff\xff\xff\xff", 1.2)],
)
def test_jitter_factor_maps_the_draw_linearly(draw: bytes, factor: float) -> None:
    assert jitter_factor(0.2, lambda n: draw) == pytest.approx(factor, abs=1e-6)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff_delay(10_000, RelayTiming(), neutral_jitter) == BACKOFF_CAP


def test_seen_ids_suppress_per_subscription_and_own_events_everywhere() -> None:
    seen = SeenIds()
    seen.record("a" * 64, "feed")
    assert seen.delivered("a" * 64, "feed")
    assert not seen.delivered("a" * 64, "other")
    assert not seen.delivered("b" * 64, "feed")
    seen.mark_own("c" * 64)
    assert seen.delivered("c" * 64, "feed")
    assert seen.delivered("c" * 64, "anything")


def test_seen_ids_keep_at_least_35000_ids_and_evict_the_oldest() -> None:
    """PROTO-10: at least the last 35,000 ids; memory stays bounded."""
    assert DEDUP_CAPACITY >= 35_000
    seen = SeenIds()
    ids = [f"{i:064x}" for i in range(DEDUP_CAPACITY + 10)]
    for event_id in ids:
        seen.record(event_id, "feed")
    assert len(seen) == DEDUP_CAPACITY
    assert not seen.delivered(ids[0], "feed")
    assert all(seen.delivered(event_id, "feed") for event_id in ids[-35_000:])


def test_seen_ids_refresh_on_use_so_a_recent_repeat_is_not_evicted() -> None:
    seen = SeenIds(capacity=3)
    seen.record("1", "feed")
    seen.record("2", "feed")
    seen.record("1", "other")
    seen.record("3", "feed")
    seen.record("4", "feed")
    assert seen.delivered("1", "feed")
    assert not seen.delivered("2", "feed")
    seen.mark_own("5")
    seen.record("6", "feed")
    seen.record("7", "feed")
    seen.record("8", "feed")
    assert not seen.delivered("5", "feed")
