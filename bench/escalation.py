"""Escalation dispatcher latency: handoff written -> escalation DM opened by every write solver.

    .venv/bin/python -m bench.escalation [--handoffs 200] [--interval 1] [--rate 20]

One LocalRelay (rust-nostr, its own process) and the real `serbero` daemon as a subprocess,
exactly as an operator starts it, with `[escalation] enabled = true`, two write solvers and
one read solver. This process plays mediation: it writes `disputes` rows and
`handoff_prepared` events with stdlib sqlite3 into the daemon's database (a second writer,
as mediation will be), and it runs the three nostr-sdk solver inboxes, which record the
`time.monotonic()` at which each DM is opened.

Two runs of N handoffs each, every handoff on its own dispute:
- steady: one handoff per transaction at `--rate` per second, so arrivals fall at every
  phase of the dispatch interval;
- burst: all N in one transaction, the worst case for one cycle.

Latency of a handoff = the later of the two write solvers opening its DM, minus the moment
the handoff's transaction committed (both on this process's monotonic clock). The same
figure from `occurred_at` (whole seconds, so up to 1 s larger) is printed too. Target (issue
#6): p95 <= dispatch_interval_seconds + 2 s. Checked afterwards: every write solver got
exactly one DM per handoff and the read solver none, one dispatch row per handoff, and the
reconciliation recipe (dispatch rows against their audit rows) returns no rows.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bench.daemon_process import DATABASE_FILE, DaemonProcess
from serbero.protocol.handoff import parse_handoff_dm
from serbero.protocol.keys import Keys
from tests.escalation.helpers import RECIPE_RECONCILIATION, package
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port
from tests.support.solver_inbox import ReceivedDm, SolverInbox

HANDOFFS: Final = 200
INTERVAL: Final = 1
RATE: Final = 20.0
TARGET_SLACK_SECONDS: Final = 2.0

READY_TIMEOUT: Final = 30.0
DELIVERY_TIMEOUT: Final = 120.0
DISPATCHER_ENABLED: Final = "phase4_dispatcher_enabled"
MOSTRO_PUBKEY: Final = Keys(bytes([7]) * 32).public_hex
HANDOFF_INSERT: Final = (
    "INSERT INTO mediation_events (session_id, kind, payload_json, prompt_bundle_id,"
    " policy_hash, occurred_at) VALUES (NULL, 'handoff_prepared', ?, 'phase3-default', 'h1', ?)"
)


def daemon_config(
    serbero: Keys, relay: str, writers: Sequence[Keys], reader: Keys, interval: int
) -> str:
    solvers = "".join(
        f'[[solvers]]\npubkey = "{k.public_hex}"\npermission = "write"\n\n' for k in writers
    )
    solvers += f'[[solvers]]\npubkey = "{reader.public_hex}"\npermission = "read"\n\n'
    return (
        f'[serbero]\nprivate_key = "{serbero.secret.hex()}"\ndb_path = "{DATABASE_FILE}"\n'
        f'log_level = "info"\n\n[mostro]\npubkey = "{MOSTRO_PUBKEY}"\n\n'
        f'[[relays]]\nurl = "{relay}"\n\n{solvers}'
        f"[escalation]\nenabled = true\ndispatch_interval_seconds = {interval}\n"
    )


class Arrivals:
    """First opening time of each dispute's DM, per inbox; waitable."""

    def __init__(self, inboxes: int) -> None:
        self._cond = threading.Condition()
        self.by_inbox: list[dict[str, float]] = [{} for _ in range(inboxes)]
        self.duplicates = 0

    def callback(self, index: int) -> Callable[[ReceivedDm], None]:
        def record(dm: ReceivedDm) -> None:
            dispute_id = parse_handoff_dm(dm.content).dispute_id
            with self._cond:
                seen = self.by_inbox[index]
                if dispute_id in seen:
                    self.duplicates += 1
                else:
                    seen[dispute_id] = dm.received_at
                self._cond.notify_all()

        return record

    def wait_all(self, inboxes: Sequence[int], dispute_ids: Sequence[str], timeout: float) -> None:
        def done() -> bool:
            return all(d in self.by_inbox[i] for i in inboxes for d in dispute_ids)

        with self._cond:
            if not self._cond.wait_for(done, timeout):
                missing = sum(d not in self.by_inbox[i] for i in inboxes for d in dispute_ids)
                raise TimeoutError(f"{missing} DMs missing after {timeout:.0f} s")

    def last_arrival(self, inboxes: Sequence[int], dispute_id: str) -> float:
        with self._cond:
            return max(self.by_inbox[i][dispute_id] for i in inboxes)


class Written:
    """When each handoff's transaction committed: monotonic seconds and its `occurred_at`."""

    def __init__(self) -> None:
        self.committed: dict[str, float] = {}
        self.occurred_at: dict[str, int] = {}
        # Monotonic minus wall clock, to place `occurred_at` on the monotonic axis.
        self.offset = time.monotonic() - time.time()


def write_steady(conn: sqlite3.Connection, ids: Sequence[str], rate: float, into: Written) -> None:
    start = time.monotonic()
    for n, dispute_id in enumerate(ids):
        time.sleep(max(0.0, start + n / rate - time.monotonic()))
        occurred_at = int(time.time())
        with conn:
            conn.execute(HANDOFF_INSERT, (package(dispute_id), occurred_at))
        into.committed[dispute_id] = time.monotonic()
        into.occurred_at[dispute_id] = occurred_at


def write_burst(conn: sqlite3.Connection, ids: Sequence[str], into: Written) -> None:
    occurred_at = int(time.time())
    with conn:
        conn.executemany(HANDOFF_INSERT, [(package(d), occurred_at) for d in ids])
    committed = time.monotonic()
    for dispute_id in ids:
        into.committed[dispute_id] = committed
        into.occurred_at[dispute_id] = occurred_at


def p95(samples: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def report(
    name: str, ids: Sequence[str], written: Written, arrivals: Arrivals, target: float
) -> bool:
    writers = (0, 1)
    from_commit = [arrivals.last_arrival(writers, d) - written.committed[d] for d in ids]
    from_occurred = [
        arrivals.last_arrival(writers, d) - (written.occurred_at[d] + written.offset) for d in ids
    ]
    ok = p95(from_commit) <= target
    print(
        f"  {name:<7} from commit       p50 {statistics.median(from_commit):5.2f} s"
        f"   p95 {p95(from_commit):5.2f} s   max {max(from_commit):5.2f} s"
        f"   target p95 <= {target:g} s  {'OK' if ok else 'MISS'}"
    )
    print(
        f"  {'':<7} from occurred_at  p50 {statistics.median(from_occurred):5.2f} s"
        f"   p95 {p95(from_occurred):5.2f} s   max {max(from_occurred):5.2f} s"
        "   (whole-second stamp)"
    )
    return ok


def _connect(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, timeout=10)
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def run(args: argparse.Namespace, workdir: Path) -> int:
    cleanups: list[Callable[[], object]] = []
    try:
        relay = LocalRelayProcess(free_loopback_port())
        relay.start()
        cleanups.append(relay.stop)
        writers = [Keys.generate(), Keys.generate()]
        reader = Keys.generate()
        arrivals = Arrivals(3)
        for index, keys in enumerate((*writers, reader)):
            inbox = SolverInbox(
                keys.secret.hex(), [relay.url], on_message=arrivals.callback(index)
            ).start()
            cleanups.append(inbox.close)
        daemon = DaemonProcess(
            workdir, daemon_config(Keys.generate(), relay.url, writers, reader, args.interval)
        )
        cleanups.append(daemon.stop)
        daemon.wait_ready()
        if not daemon.count_events(DISPATCHER_ENABLED)[DISPATCHER_ENABLED]:
            raise RuntimeError("the daemon did not start the escalation dispatcher")
        conn = _connect(daemon.db_path)
        cleanups.append(conn.close)

        runs = {
            "warm-up": ["warm-0"],
            "steady": [f"steady-{n}" for n in range(args.handoffs)],
            "burst": [f"burst-{n}" for n in range(args.handoffs)],
        }
        with conn:
            conn.executemany(
                "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
                " dispute_status, event_timestamp, detected_at, lifecycle_state)"
                " VALUES (?, ?, ?, 'buyer', 'initiated', 1, 1, 'notified')",
                [(d, f"ev-{d}", MOSTRO_PUBKEY) for ids in runs.values() for d in ids],
            )
        written = Written()
        target = args.interval + TARGET_SLACK_SECONDS
        print(
            f"bench/escalation.py: serbero daemon, [escalation] dispatch_interval_seconds = "
            f"{args.interval}; one LocalRelay; 2 write solvers + 1 read solver; "
            f"{os.cpu_count()} CPUs"
        )
        print(
            "  latency = handoff committed by the second writer -> DM opened by the later of "
            "the two write solvers"
        )
        write_burst(conn, runs["warm-up"], written)
        arrivals.wait_all((0, 1), runs["warm-up"], DELIVERY_TIMEOUT)

        print(f"steady: {args.handoffs} handoffs, one per transaction, {args.rate:g}/s")
        write_steady(conn, runs["steady"], args.rate, written)
        arrivals.wait_all((0, 1), runs["steady"], DELIVERY_TIMEOUT)
        steady_ok = report("steady", runs["steady"], written, arrivals, target)

        print(f"burst: {args.handoffs} handoffs in one transaction")
        write_burst(conn, runs["burst"], written)
        arrivals.wait_all((0, 1), runs["burst"], DELIVERY_TIMEOUT)
        burst_ok = report("burst", runs["burst"], written, arrivals, target)

        total = sum(len(ids) for ids in runs.values())
        deadline = time.monotonic() + READY_TIMEOUT
        while conn.execute("SELECT COUNT(*) FROM escalation_dispatches").fetchone()[0] < total:
            if time.monotonic() > deadline:
                raise TimeoutError("dispatch rows missing")
            time.sleep(0.05)
        rows = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT handoff_event_id), SUM(status = 'dispatched')"
            " FROM escalation_dispatches"
        ).fetchone()
        reconciliation = conn.execute(RECIPE_RECONCILIATION).fetchall()
        checks_ok = (
            rows == (total, total, total)
            and not reconciliation
            and arrivals.duplicates == 0
            and not arrivals.by_inbox[2]
        )
        print(
            f"checks: {rows[0]} dispatch rows for {total} handoffs, reconciliation rows "
            f"{len(reconciliation)}, duplicate DMs {arrivals.duplicates}, DMs to the read "
            f"solver {len(arrivals.by_inbox[2])}  {'OK' if checks_ok else 'FAILED'}"
        )
        status = daemon.stop()
        print(f"serbero exit status after SIGTERM: {status}")
        all_ok = steady_ok and burst_ok and checks_ok
        print(f"targets: {'all met' if all_ok else 'NOT all met'}")
        return 0 if checks_ok else 1
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handoffs", type=int, default=HANDOFFS)
    parser.add_argument("--interval", type=int, default=INTERVAL)
    parser.add_argument("--rate", type=float, default=RATE, help="steady run: handoffs per second")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="serbero-bench-escalation-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
