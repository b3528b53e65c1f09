"""Mediation at scale (issue 17): many sessions at once through the daemon, and the engine
tick's store work over 10,000 stored sessions.

    .venv/bin/python -m bench.mediation [--sessions 200] [--stored 10000] [--only sessions|tick]

Figures, each beside its target:

- sessions: the `serbero` daemon (a subprocess, mediation on, `[chat]
  inbound_fetch_interval_seconds = 1`) is given `--sessions` disputes at once; every one
  opens a session (`bench.mediation_sessions`: the scripted model answers after
  `--model-delay` s, the simulated Mostro answers the take), both parties answer Serbero's
  first message after 0-`--answer-within` s, the model summarises once both have, and the
  solver gets the summary. Every session must end; from each session's last party answer
  (handed to the relay) to the summary DM reaching the solver's client: p50/p95/max, target
  p95 <= 1 s plus the model's time after that answer (an evaluation and a summary: 2 calls);
  the daemon's peak RSS (VmHWM), target <= 120 MB.

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
import functools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import IO, Final

import apsw
import msgspec
import trio

from bench.daemon_process import DaemonProcess
from bench.mediation_sessions import SUMMARY_HEADLINE, model_role, parties_role
from bench.mediation_store import SEED_NOW, connection, seed_store
from bench.notify import (
    REASONING_KEY_ENV,
    Child,
    Deliveries,
    daemon_config,
    mediation_config,
    p95,
)
from bench.reasoning import url_process
from serbero.actors.mediation.requests import ListPendingEvaluations, ListUnresponsiveSessions
from serbero.actors.mediation.summary_requests import ListSummariesDue
from serbero.actors.tracker import Request, Tracker, open_tracker
from serbero.actors.tracker_requests import ListEligible, ListUnsentOutbound
from serbero.clock import system_wall_clock
from serbero.protocol.keys import Keys
from serbero.store.chat import unsent_outbound
from serbero.store.connection import open_readonly
from serbero.store.mediation import NOT_LIVE_SESSION_STATES
from serbero.store.rounds import pending_evaluations, unresponsive_sessions
from serbero.store.sessions import list_eligible
from serbero.store.summaries import summaries_due
from tests.store.helpers import query_plans
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port

SESSIONS: Final = 200
ANSWER_WITHIN: Final = 2.0
MODEL_DELAY: Final = 0.2
# Model calls between a session's last party answer and its summary: the evaluation, then
# the summary itself.
MODEL_CALLS_AFTER_ANSWER: Final = 2
FETCH_INTERVAL: Final = 1
TARGET_SUMMARY_S: Final = 1.0
TARGET_RSS_MB: Final = 120.0
# The run stops waiting when no session ended (or no DM arrived) for this long.
STALL_SECONDS: Final = 60.0
POLL_SECONDS: Final = 0.5
# `session_states` reports the stored party messages under this key.
INBOUND: Final = "(inbound messages)"
STORED: Final = 10_000
LIVE: Final = 200
TICK_ROUNDS: Final = 21
SWEEP_TIMEOUT: Final = 1_800  # [mediation].party_response_timeout_seconds default
TARGET_TICK_MS: Final = 50.0


class TickQuery(msgspec.Struct, frozen=True):
    """One listing the tick runs: its store function and the tracker request for it."""

    name: str
    run: Callable[[apsw.Connection], Sequence[object]]
    request: Callable[[], Request[object]]


TICK_QUERIES: Final = (
    TickQuery("start: eligible disputes (MED-31)", list_eligible, ListEligible),
    TickQuery("chat pass: unsent outbound (Q-4)", unsent_outbound, ListUnsentOutbound),
    TickQuery("rounds: pending evaluations (Q-1)", pending_evaluations, ListPendingEvaluations),
    TickQuery(
        "sweep: silent parties (§12.1 #4)",
        functools.partial(unresponsive_sessions, now=SEED_NOW, timeout_seconds=SWEEP_TIMEOUT),
        functools.partial(ListUnresponsiveSessions, SEED_NOW, SWEEP_TIMEOUT),
    ),
    TickQuery("summaries: classified sessions (Q-2)", summaries_due, ListSummariesDue),
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


# --- many sessions through the daemon -------------------------------------------------------


def model_process(delay: float) -> AbstractContextManager[str]:
    """The scripted model (`bench.mediation_sessions.model_reply`) in its own process."""
    return url_process([sys.executable, "-m", "bench.mediation", "--role", "model", str(delay)])


class Answers:
    """The parties process seen from here: when each party sent its answer."""

    def __init__(self, stream: IO[str]) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, dict[str, float]] = {}
        self.errors: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            record = json.loads(line)
            with self._lock:
                if record[0] == "answered":
                    _, dispute_id, role, sent = record
                    self._sent.setdefault(dispute_id, {})[role] = sent
                elif record[0] == "errors":
                    self.errors.extend(record[1])

    def count(self) -> int:
        with self._lock:
            return sum(len(roles) for roles in self._sent.values())

    def last(self) -> dict[str, float]:
        """Per dispute both parties answered: when the later answer was sent."""
        with self._lock:
            return {d: max(roles.values()) for d, roles in self._sent.items() if len(roles) == 2}


def session_states(db_path: Path) -> dict[str, int]:
    """Sessions per state, and `inbound` the party messages stored, read from the daemon's
    database while it runs."""
    conn = open_readonly(str(db_path))
    try:
        rows = conn.execute("SELECT state, COUNT(*) FROM mediation_sessions GROUP BY state")
        states = {str(state): int(count) for state, count in rows}
        inbound = conn.execute(
            "SELECT COUNT(*) FROM mediation_messages WHERE direction = 'inbound'"
        ).fetchone()
        return {**states, INBOUND: int(inbound[0]) if inbound else 0}
    finally:
        conn.close()


def wait_ended(db_path: Path, sessions: int) -> tuple[dict[str, int], bool]:
    """Until `sessions` sessions exist and none is live, or nothing changed for
    STALL_SECONDS; (sessions per state, whether all ended)."""
    last_change, seen = time.monotonic(), {}
    while True:
        states = session_states(db_path)
        ended = sum(n for s, n in states.items() if s in NOT_LIVE_SESSION_STATES)
        if ended >= sessions:
            return states, True
        if states != seen:
            last_change, seen = time.monotonic(), states
        elif time.monotonic() - last_change > STALL_SECONDS:
            return states, False
        time.sleep(POLL_SECONDS)


class SessionFigures(msgspec.Struct, frozen=True):
    latencies: list[float]
    answers: int
    states: dict[str, int]
    all_ended: bool
    hwm_mb: float
    rss_mb: float


def bench_sessions(args: argparse.Namespace) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="serbero-bench-"))
    try:
        figures = run_sessions(args, workdir)
    except BaseException:
        print(f"the run's files are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return print_sessions(args, figures)


def run_sessions(args: argparse.Namespace, workdir: Path) -> SessionFigures:
    """Every process up, the disputes published at once, until every session ended and
    the summaries reached the solver."""
    serbero, mostro_keys, solver = Keys.generate(), Keys.generate(), Keys.generate()
    with ExitStack() as stack:
        relay = LocalRelayProcess(free_loopback_port())
        relay.start()
        stack.callback(relay.stop)
        inbox = Child("inbox", relay.url, "0", solver.secret.hex())
        stack.callback(inbox.stop)
        deliveries = Deliveries([inbox])
        model_url = stack.enter_context(model_process(args.model_delay))
        config = daemon_config(serbero, mostro_keys, relay.url, [solver])
        config += mediation_config(model_url)
        config += f"\n[chat]\ninbound_fetch_interval_seconds = {FETCH_INTERVAL}\n"
        daemon = DaemonProcess(workdir / "serbero", config, {REASONING_KEY_ENV: "sk-bench"})
        stack.callback(daemon.stop)
        daemon.wait_event("mediation_engine_started")
        mostro = MostroSim(mostro_keys.secret.hex(), [relay.url], answer_takes=True).start()
        stack.callback(mostro.close)
        dispute_ids = [str(uuid.uuid4()) for _ in range(args.sessions)]
        parties_file = workdir / "parties.json"
        parties_file.write_text(json.dumps([[d, *mostro.trade_keys(d)] for d in dispute_ids]))
        parties = Child(
            "parties",
            relay.url,
            serbero.public_hex,
            str(args.answer_within),
            str(parties_file),
            module="bench.mediation",
        )
        stack.callback(parties.stop)
        answers = Answers(parties.stdout)
        events = [mostro.sign_opening(d) for d in dispute_ids]
        before = deliveries.counts()
        mostro.publish_signed(events)
        states, all_ended = wait_ended(daemon.db_path, args.sessions)
        summaries = states.get("closed", 0) + states.get("summary_delivered", 0)
        # Each dispute's notification, its taken notice and, for a summary, the summary.
        deliveries.wait_arrivals(before, (0,), 2 * args.sessions + summaries, STALL_SECONDS)
        hwm, rss = daemon.memory_mb()
        deliveries.wait_complete(before, serbero.public_hex, dispute_ids, (0,), STALL_SECONDS)
        last_answer = answers.last()
        latencies = []
        for dm in deliveries.other_arrivals():
            if dm.sender != serbero.public_hex or not dm.headline.startswith(SUMMARY_HEADLINE):
                continue
            dispute_id = dm.headline[len(SUMMARY_HEADLINE) :].split(":", 1)[0]
            if dispute_id in last_answer:
                latencies.append(dm.arrived - last_answer[dispute_id])
        return SessionFigures(latencies, answers.count(), states, all_ended, hwm, rss)


def print_sessions(args: argparse.Namespace, figures: SessionFigures) -> bool:
    target = TARGET_SUMMARY_S + MODEL_CALLS_AFTER_ANSWER * args.model_delay
    print(
        f"sessions: {args.sessions} disputes at once, each mediated; parties answer after "
        f"0-{args.answer_within:g} s, the model after {args.model_delay * 1000:.0f} ms; "
        f"[chat] inbound_fetch_interval_seconds = {FETCH_INTERVAL}"
    )
    inbound = figures.states.get(INBOUND, 0)
    states = ", ".join(f"{s} {n}" for s, n in sorted(figures.states.items()) if s != INBOUND)
    ended = "every one ended" if figures.all_ended else "NOT all ended"
    print(f"  sessions by state: {states}  {ended}")
    print(f"  party answers sent {figures.answers}, stored by the daemon {inbound}")
    latency_ok = False
    if figures.latencies:
        ordered = sorted(figures.latencies)
        worst = p95(ordered)
        latency_ok = worst <= target and len(ordered) == args.sessions
        print(
            f"  last party answer -> summary DM at the solver ({len(ordered)} sessions): "
            f"p50 {statistics.median(ordered):.2f} s, p95 {worst:.2f} s, max {ordered[-1]:.2f} s"
            f"   target p95 <= {target:.2f} s ({TARGET_SUMMARY_S:g} s + "
            f"{MODEL_CALLS_AFTER_ANSWER} x {args.model_delay:g} s of model)  "
            f"{'OK' if latency_ok else 'MISS'}"
        )
    else:
        print("  no summary reached the solver  MISS")
    rss_ok = figures.hwm_mb <= TARGET_RSS_MB
    print(
        f"  daemon memory: VmHWM {figures.hwm_mb:.1f} MB, VmRSS {figures.rss_mb:.1f} MB"
        f"   target VmHWM <= {TARGET_RSS_MB:g} MB  {'OK' if rss_ok else 'MISS'}"
    )
    return figures.all_ended and latency_ok and rss_ok


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=SESSIONS)
    parser.add_argument("--answer-within", type=float, default=ANSWER_WITHIN)
    parser.add_argument("--model-delay", type=float, default=MODEL_DELAY)
    parser.add_argument("--stored", type=int, default=STORED)
    parser.add_argument("--live", type=int, default=LIVE)
    parser.add_argument("--only", choices=("sessions", "tick"))
    parser.add_argument("--role", choices=("model", "parties"), help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "model":
        model_role(*args.role_args)
        return 0
    if args.role == "parties":
        parties_role(*args.role_args)
        return 0
    ok = True
    if args.only in (None, "sessions"):
        ok = bench_sessions(args) and ok
        print()
    if args.only in (None, "tick"):
        ok = bench_tick(args.stored, args.live) and ok
    print(f"targets: {'all met' if ok else 'NOT all met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
