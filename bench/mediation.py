"""Mediation at scale (issue 17): the engine tick's store work over 10,000 stored sessions.

    .venv/bin/python -m bench.mediation [--stored 10000] [--live 200]

Figures, each beside its target:

- tick: a real SQLite file (created and migrated as the daemon does) seeded with `--stored`
  sessions, most of them over (`bench.mediation_store`), and every listing the engine's tick
  runs (MED-70: the start's eligibility listing, the chat pass's unsent outbound rows, ...)
  timed one after the other, straight on the connection and through the tracker as the
  engine asks for them (one request each, the SQLite thread and back). The tick's store
  time is their sum; target <= 50 ms. Per listing: the median and the worst of
  TICK_ROUNDS rounds, and the rows it returned; the query plan of the slowest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import apsw
import msgspec
import trio

from bench.mediation_store import connection, seed_store
from serbero.actors.tracker import Request, Tracker, open_tracker
from serbero.actors.tracker_requests import ListEligible, ListUnsentOutbound
from serbero.clock import system_wall_clock
from serbero.store.chat import unsent_outbound
from serbero.store.sessions import list_eligible
from tests.store.helpers import query_plans

STORED: Final = 10_000
LIVE: Final = 200
TICK_ROUNDS: Final = 21
TARGET_TICK_MS: Final = 50.0


class TickQuery(msgspec.Struct, frozen=True):
    """One listing the tick runs: its store function and the tracker request for it."""

    name: str
    run: Callable[[apsw.Connection], Sequence[object]]
    request: Callable[[], Request[object]]


TICK_QUERIES: Final = (
    TickQuery("start: eligible disputes (MED-31)", list_eligible, ListEligible),
    TickQuery("chat pass: unsent outbound (Q-4)", unsent_outbound, ListUnsentOutbound),
)


class QueryFigures(msgspec.Struct, frozen=True):
    name: str
    rows: int
    direct_ms: list[float]
    tracker_ms: list[float]


def time_direct(conn: apsw.Connection, query: TickQuery) -> tuple[int, list[float]]:
    """(rows, ms per round) of the store function on the connection."""
    rows = len(query.run(conn))  # warms the page cache as a running daemon's would be
    samples = []
    for _ in range(TICK_ROUNDS):
        start = time.perf_counter()
        query.run(conn)
        samples.append((time.perf_counter() - start) * 1000)
    return rows, samples


async def time_tracker(path: str) -> dict[str, list[float]]:
    """ms per round of each request submitted to a tracker over the file, and of the whole
    tick (every request in turn, as the engine's stages ask)."""
    samples: dict[str, list[float]] = {q.name: [] for q in TICK_QUERIES}
    samples["tick"] = []

    async def ask(tracker: Tracker, request: Request[object]) -> None:
        await (await tracker.submit(request)).result()

    async with open_tracker(path, wall_clock=system_wall_clock) as tracker:
        for query in TICK_QUERIES:
            await ask(tracker, query.request())
        for _ in range(TICK_ROUNDS):
            tick_start = time.perf_counter()
            for query in TICK_QUERIES:
                start = time.perf_counter()
                await ask(tracker, query.request())
                samples[query.name].append((time.perf_counter() - start) * 1000)
            samples["tick"].append((time.perf_counter() - tick_start) * 1000)
    return samples


def bench_tick(stored: int, live: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="serbero-bench-") as workdir:
        path = str(Path(workdir) / "serbero.db")
        start = time.perf_counter()
        seeded = seed_store(path, stored, live)
        print(
            f"tick: {seeded.sessions} stored sessions ({seeded.live} live), {seeded.disputes} "
            f"disputes, {seeded.messages} chat messages, {seeded.events} audit events; "
            f"{seeded.bytes / 1e6:.1f} MB file (seeded in {time.perf_counter() - start:.1f} s)"
        )
        conn = connection(path)
        figures = []
        try:
            for query in TICK_QUERIES:
                rows, direct = time_direct(conn, query)
                figures.append(QueryFigures(query.name, rows, direct, []))
        finally:
            conn.close()
        tracker = trio.run(time_tracker, path)
        for index, figure in enumerate(figures):
            figures[index] = msgspec.structs.replace(figure, tracker_ms=tracker[figure.name])
        for figure in figures:
            print(
                f"  {figure.name:<40} {figure.rows:>5} rows   direct median "
                f"{statistics.median(figure.direct_ms):6.2f} ms (max "
                f"{max(figure.direct_ms):6.2f})   through the tracker median "
                f"{statistics.median(figure.tracker_ms):6.2f} ms"
            )
        slowest = max(figures, key=lambda f: statistics.median(f.direct_ms))
        conn = connection(path)
        try:
            query = next(q for q in TICK_QUERIES if q.name == slowest.name)
            plan = [f"      {line}" for line in query_plans(conn, query.run)]
        finally:
            conn.close()
        print(f"    plan of the slowest ({slowest.name}):", *plan, sep="\n")
        tick = tracker["tick"]
        ok = statistics.median(tick) <= TARGET_TICK_MS
        print(
            f"  the tick's listings through the tracker, median {statistics.median(tick):6.2f} ms"
            f" (max {max(tick):.2f})   target <= {TARGET_TICK_MS:g} ms  "
            f"{'OK' if ok else 'MISS'}"
        )
        return ok


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=STORED)
    parser.add_argument("--live", type=int, default=LIVE)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    ok = bench_tick(args.stored, args.live)
    print(f"targets: {'all met' if ok else 'NOT all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
