"""The wall clock as an injectable dependency.

Trio's clock (`trio.current_time()`) drives sleeping; this one says what time it is for what we
store and sign. Tests pass a settable clock so stored timestamps are deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WallClock = Callable[[], int]


def system_wall_clock() -> int:
    """Current Unix time in whole seconds."""
    return int(time.time())
