"""The wall clock as an injectable dependency.

Trio's clock (`trio.current_time()`) drives sleeping; this one says what time it is for what we
store and sign. Tests pass a `FakeWallClock` so stored timestamps are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WallClock = Callable[[], int]


def system_wall_clock() -> int:
    """Current Unix time in whole seconds."""
    return int(time.time())


class FakeWallClock:
    """A settable wall clock for tests; optionally follows trio's (autojump) clock."""

    def __init__(self, start: int = 1_700_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds
