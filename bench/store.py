"""Store benchmark: logical transactions through the tracker, and the timer's query at scale.

    .venv/bin/python -m bench.store [--disputes 3000] [--rows 100000]

Figures printed next to their targets (issue #3):
- detection steps (one dispute + its 5 outbox rows, one transaction each) per second
  through the tracker with `synchronous=FULL` on a real file: target >= 2,000/s;
- the CORE-52 unattended query over 100,000 disputes: target <= 20 ms.
Rows: the store alone; one caller awaiting each answer (`ask`); one caller keeping up to 64
requests in flight (`submit`, still decided strictly in arrival order, BEY-22); 32
concurrent callers; inline mode (no worker thread) with its event-loop blocking per batch;
the query through the tracker and without our v6 index.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import trio

import serbero.actors.tracker as tracker_module
from serbero.actors.tracker import Pending, open_tracker
from serbero.actors.tracker_requests import ListUnattended, RecordDetected
from serbero.store.connection import open_database
from serbero.store.disputes import (
    DetectionResult,
    DisputeEvent,
    list_unattended,
    record_detected,
)
from serbero.store.outbox import OutboxMessage
from tests.support.clocks import FakeWallClock

TARGET_TX_PER_S = 2000
TARGET_QUERY_MS = 20.0
SOLVERS = 5
CONCURRENT_CALLERS = 32
PIPELINE_WINDOW = 64
T0 = 1_700_000_000
MOSTRO = "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


def dispute_event(i: int, prefix: str) -> DisputeEvent:
    return DisputeEvent(
        dispute_id=f"{prefix}-{i:08d}-9a4b-4c1e-8f3a-2b7c5d9e0a11",
        event_id=f"{prefix}{i:060d}",
        mostro_pubkey=MOSTRO,
        event_timestamp=T0 + i,
        status="initiated",
        initiator_role="buyer" if i % 2 else "seller",
    )


def owed(ev: DisputeEvent) -> tuple[OutboxMessage, ...]:
    body = (
        "A new Mostro dispute needs a solver.\n"
        f"dispute_id: {ev.dispute_id}\ninitiator: {ev.initiator_role}\n"
        f"event_timestamp: {ev.event_timestamp}\nstatus: initiated"
    )
    return tuple(OutboxMessage(solver_pubkey=f"{s:x}" * 64, body=body) for s in range(SOLVERS))


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def fresh_db(workdir: Path, name: str) -> str:
    return str(workdir / f"{name}.db")


def bench_direct(workdir: Path, n: int) -> float:
    conn, _ = open_database(fresh_db(workdir, "direct"))
    events = [dispute_event(i, "dir") for i in range(n)]
    start = time.perf_counter()
    for ev in events:
        record_detected(conn, ev, owed(ev), T0)
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


async def bench_tracker(workdir: Path, n: int, callers: int, offload: bool, name: str) -> float:
    events = [dispute_event(i, name[:3]) for i in range(n)]
    requests = [RecordDetected(ev, owed(ev)) for ev in events]
    async with open_tracker(
        fresh_db(workdir, name), wall_clock=FakeWallClock(T0), offload=offload
    ) as tracker:

        async def worker(offset: int) -> None:
            for request in requests[offset::callers]:
                result = await tracker.ask(request)
                assert result.inserted

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for offset in range(callers):
                nursery.start_soon(worker, offset)
        elapsed = time.perf_counter() - start
    return n / elapsed


async def bench_pipelined(workdir: Path, n: int, window: int) -> float:
    """One caller deciding in arrival order, keeping up to `window` requests in flight."""
    events = [dispute_event(i, "pip") for i in range(n)]
    requests = [RecordDetected(ev, owed(ev)) for ev in events]
    async with open_tracker(
        fresh_db(workdir, "pipelined"), wall_clock=FakeWallClock(T0)
    ) as tracker:
        in_flight: deque[Pending[DetectionResult]] = deque()
        start = time.perf_counter()
        for request in requests:
            in_flight.append(await tracker.submit(request))
            if len(in_flight) >= window:
                assert (await in_flight.popleft().result()).inserted
        while in_flight:
            assert (await in_flight.popleft().result()).inserted
        elapsed = time.perf_counter() - start
    return n / elapsed


def timed_batches(samples: list[float]) -> Callable[..., object]:
    original = tracker_module.run_batch

    def timed(*args: object) -> object:
        start = time.perf_counter()
        result = original(*args)  # type: ignore[arg-type]
        samples.append(time.perf_counter() - start)
        return result

    return timed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def populate(path: str, rows: int) -> int:
    """`rows` disputes: 85 % resolved, 10 % taken, 5 % notified (half of those due)."""
    conn, _ = open_database(path)
    due = 0
    with conn:
        for i in range(rows):
            bucket = i % 100
            if bucket < 85:
                state, notified = "resolved", T0 + i
            elif bucket < 95:
                state, notified = "taken", T0 + i
            else:
                state = "notified"
                notified = T0 - 10_000 if bucket % 2 else T0 + 10_000
                due += bucket % 2
            conn.execute(
                "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                " event_timestamp, detected_at, lifecycle_state, last_notified_at)"
                " VALUES (?, ?, ?, 'buyer', ?, ?, ?, ?)",
                (f"q-{i:08d}", f"{i:064d}", MOSTRO, T0 + i, T0 + i, state, notified),
            )
    conn.close()
    return due


def time_query(path: str, runs: int) -> tuple[float, float, int]:
    conn, _ = open_database(path)
    samples = []
    found = 0
    for _ in range(runs):
        start = time.perf_counter()
        found = len(list_unattended(conn, T0, 300))
        samples.append((time.perf_counter() - start) * 1000)
    conn.close()
    return statistics.median(samples), percentile(samples, 0.95), found


async def time_query_via_tracker(path: str, runs: int) -> float:
    samples = []
    async with open_tracker(path, wall_clock=FakeWallClock(T0)) as tracker:
        for _ in range(runs):
            start = time.perf_counter()
            await tracker.ask(ListUnattended(now=T0, renotification_seconds=300))
            samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--disputes", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    n = args.disputes
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as tmp:
        workdir = Path(tmp)
        print(f"# store bench: {n} detection steps (dispute + {SOLVERS} outbox rows each),")
        print("# synchronous=FULL, WAL, file under the repository directory\n")

        direct = bench_direct(workdir, n)
        sequential = await bench_tracker(workdir, n, 1, True, "seq")
        pipelined = await bench_pipelined(workdir, n, PIPELINE_WINDOW)
        concurrent = await bench_tracker(workdir, n, CONCURRENT_CALLERS, True, "conc")
        batch_times: list[float] = []
        tracker_module.run_batch = timed_batches(batch_times)  # type: ignore[assignment]
        inline = await bench_tracker(workdir, n, CONCURRENT_CALLERS, False, "inline")
        inline_seq_times: list[float] = []
        tracker_module.run_batch = timed_batches(inline_seq_times)  # type: ignore[assignment]
        inline_seq = await bench_tracker(workdir, n, 1, False, "inlseq")

        print(f"{'store, no tracker (1 caller)':52s} {direct:8.0f} tx/s")
        print(
            f"{'tracker, worker thread, 1 sequential caller':52s} {sequential:8.0f} tx/s"
            f"   target >= {TARGET_TX_PER_S}  {verdict(sequential >= TARGET_TX_PER_S)}"
        )
        print(
            f"{f'tracker, worker thread, 1 caller, submit window {PIPELINE_WINDOW}':52s}"
            f" {pipelined:8.0f} tx/s   target >= {TARGET_TX_PER_S}"
            f"  {verdict(pipelined >= TARGET_TX_PER_S)}"
        )
        print(
            f"{f'tracker, worker thread, {CONCURRENT_CALLERS} callers (group commit)':52s}"
            f" {concurrent:8.0f} tx/s   target >= {TARGET_TX_PER_S}"
            f"  {verdict(concurrent >= TARGET_TX_PER_S)}"
        )
        print(f"{f'tracker, inline, {CONCURRENT_CALLERS} callers':52s} {inline:8.0f} tx/s")
        print(f"{'tracker, inline, 1 sequential caller':52s} {inline_seq:8.0f} tx/s")
        for label, samples in [
            ("inline loop block per batch, 1 caller", inline_seq_times),
            (f"inline loop block per batch, {CONCURRENT_CALLERS} callers", batch_times),
        ]:
            print(
                f"{label:52s} p50 {percentile(samples, 0.5) * 1000:6.2f} ms"
                f"  p99 {percentile(samples, 0.99) * 1000:6.2f} ms"
                f"  max {max(samples) * 1000:6.2f} ms"
            )

        path = fresh_db(workdir, "query")
        due = populate(path, args.rows)
        median, p95, found = time_query(path, 50)
        assert found == due
        via_tracker = await time_query_via_tracker(path, 50)
        print(f"\n# unattended query (CORE-52) over {args.rows} disputes, {found} due")
        print(
            f"{'list_unattended, direct':52s} median {median:6.2f} ms  p95 {p95:6.2f} ms"
            f"   target <= {TARGET_QUERY_MS:.0f} ms  {verdict(p95 <= TARGET_QUERY_MS)}"
        )
        print(f"{'ListUnattended through the tracker':52s} median {via_tracker:6.2f} ms")
        conn, _ = open_database(path)
        conn.execute("DROP INDEX serbero_idx_disputes_unattended")
        conn.close()
        median_no_index, _, _ = time_query(path, 20)
        print(
            f"{'same query without serbero_idx_disputes_unattended':52s} median "
            f"{median_no_index:6.2f} ms"
        )


if __name__ == "__main__":
    trio.run(main)
