"""Wall clocks for tests: what time the code under test thinks it is.

Trio's clock (`trio.current_time()`, an autojump clock in most tests) drives sleeping; these
stand in for `serbero.clock.system_wall_clock`, the Unix time we store and sign.
"""

from __future__ import annotations

import time
from typing import Final

import trio

START: Final = 1_700_000_000  # 2023-11-14: a fixed, plausible Unix time


class FakeWallClock:
    """A wall clock that moves only when the test says so: stored timestamps are exact."""

    def __init__(self, start: int = START) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: int) -> None:
        self.now += seconds


class TrioWallClock:
    """Unix seconds that advance with Trio's (autojump) clock, from `start` at time zero."""

    def __init__(self, start: int = START) -> None:
        self.start = start

    def __call__(self) -> int:
        return self.start + int(trio.current_time())


class OffsetClock:
    """Real wall-clock time plus an offset the test moves forward: a timer sees hours pass in
    a second, while everything else (relays, subprocesses) keeps running in real time."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return int(time.time()) + self.offset

    def advance(self, seconds: int) -> None:
        self.offset += seconds
