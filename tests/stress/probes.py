"""Resource samples of a running process, from /proc: resident memory and open descriptors.

A leak under faults shows as growth that does not stop: memory that climbs with every
reconnect, sockets or database handles left open by each outage. The sampler records a
series through the run so the end can be compared with the plateau reached mid-run.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

SAMPLE_INTERVAL: Final = 1.0
KIB: Final = 1024
CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


class Sample(msgspec.Struct, frozen=True):
    """One reading: `at` is monotonic seconds; `rss_mb` VmRSS in MB (1e6 bytes); `cpu`
    the CPU seconds (user + system) the process used so far."""

    at: float
    rss_mb: float
    fds: int
    cpu: float


def read_sample(pid: int) -> Sample:
    """VmRSS, open descriptors and CPU time of `pid` now (OSError once it is gone)."""
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
            break
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    # /proc/<pid>/stat: fields 14 and 15 (utime, stime) in clock ticks, after the `(comm)`.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    return Sample(at=time.monotonic(), rss_mb=rss_kib * KIB / 1e6, fds=fds, cpu=cpu)


class ProcessSampler:
    """Samples `pid` every `interval` seconds on a thread until stopped or the process ends."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self._pid = pid
        self._interval = interval
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)

    def start(self) -> ProcessSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def latest(self) -> Sample | None:
        with self._lock:
            return self._samples[-1] if self._samples else None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = read_sample(self._pid)
            except OSError:
                return
            with self._lock:
                self._samples.append(sample)
            self._stop.wait(self._interval)


def window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    """The samples taken in [start, end] (monotonic seconds)."""
    return [sample for sample in samples if start <= sample.at <= end]


def median_rss(samples: Sequence[Sample]) -> float:
    return statistics.median(sample.rss_mb for sample in samples)


def median_fds(samples: Sequence[Sample]) -> float:
    return statistics.median(sample.fds for sample in samples)
