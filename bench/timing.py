"""Timing one call for the micro-benchmarks: the mean over many calls, over several rounds,
so one noisy moment on a shared machine inflates one round, not the figure."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Final

ROUNDS: Final = 7
CALLS_PER_ROUND: Final = 300


def per_call_us(fn: Callable[[], object], calls: int = CALLS_PER_ROUND) -> tuple[float, float]:
    """(best, median) over ROUNDS of the mean µs per call."""
    fn()  # warm caches and lazy imports outside the timed region
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - start) / calls / 1000)
    return min(samples), statistics.median(samples)
