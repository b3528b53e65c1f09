"""The stress run: 10,000 disputes over two flapping relays, three solvers, the real daemon.

Processes: two LocalRelays (rust-nostr, one process each, restarted in place), the `serbero`
console script on a temporary config and database, the solver inboxes (nostr-sdk, their own
process so unwrapping does not compete with the daemon's interpreter), and this one, which
runs the simulated Mostro, the outage plan, the /proc sampler and the daemon's log reader.

Mostro opens disputes at a steady pace and publishes each to both relays. A seeded plan
stops and restarts the relays while that goes on: each relay alone a few times, and once
both; another seeded plan has a second process hold the database's write lock a few times
for 8-15 s (`db_locks.py`), during which the daemon must hold its decisions back and lose
none. Every client reaches a relay through a gate (`gate.py`), which takes it down without
the relay dropping events it has just acknowledged. At the end every solver must hold a DM
for every dispute, each as exactly one event id (a DM re-sent after an outage cut its OK is
the same event, BEY-26); the daemon's memory and descriptors must be back at the plateau
they reached mid-run; and the database must record exactly one delivered initial notice
per (dispute, solver), with every failed attempt row matched by a retry (`report.py`).

What LocalRelay does is probed and printed at the start of every run
(`probe_relay_storage`): it keeps events in memory, so a restarted relay comes back empty;
it serves at most 500 stored events per REQ; and it closes a client connection after 6,000
EVENTs. Nothing published before a restart comes back from that relay, so delivery across
an outage rests on the other relay (Mostro and the daemon publish to both) and on the
daemon's retries and re-subscriptions. The outage plan leaves every client time to
reconnect before the next outage (`outages.py`), so a loss is the daemon's, not the
harness's. The connection cut means the daemon, which publishes 30,000 wraps to each relay,
also loses each link a few times outside the plan; the report lists those drops apart.

A failed run keeps its directory (config, database, the daemon's log as JSON lines, what
Mostro published, the outages) and prints where it is.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import msgspec
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from serbero.protocol.event import sign_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import encode_event_message
from tests.daemon.process import DaemonProcess
from tests.stress.analysis import dispute_states, read_database
from tests.stress.db_locks import DbLock, DbLockRunner, plan_db_locks
from tests.stress.deliveries import Deliveries, InboxWorker
from tests.stress.feed import DisputeFeed
from tests.stress.gate import Gates
from tests.stress.outages import Outage, OutageRunner, plan_outages
from tests.stress.probes import ProcessSampler
from tests.stress.report import (
    RELAY_LABELS,
    Observations,
    PublishedDispute,
    StressReport,
    evaluate,
    say,
)
from tests.support.mostro_sim import DISPUTE_KIND, MostroSim
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port

DEFAULT_DISPUTES: Final = 10_000
DEFAULT_SOLVERS: Final = 3
# Disputes per second Mostro opens. 10,000 at this pace keep the daemon busy ~2.5 minutes:
# long enough for every outage of the plan to fall inside the load.
DEFAULT_RATE: Final = 65.0
# Whole run, set-up to teardown; the run stops itself and fails past it.
DEFAULT_BUDGET: Final = 570.0
PUBLISHERS: Final = 32
# Outages start once the load is under way and end before the last disputes are opened.
OUTAGES_FROM: Final = 8.0
OUTAGES_END_BEFORE_LOAD_END: Final = 4.0
# Time kept back from the budget for the settle window, shutdown and the checks.
TEARDOWN_RESERVE: Final = 45.0
# Give up early when nothing is owed, nothing is published and no DM arrived for this long.
STALL_SECONDS: Final = 30.0
DAEMON_READY_TIMEOUT: Final = 30.0
READY_SAMPLES_SECONDS: Final = 3.0
SETTLE_SECONDS: Final = 10.0
# After the last DM, the daemon may still be in reconnect backoff on a relay (capped at
# 60 s); the end figures are read with both links up, so descriptors compare like for like.
RECONNECT_WAIT: Final = 70.0
PROGRESS_EVERY: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 10.0
HEALTH_TIMEOUT: Final = 2.0
PROBE_EVENTS: Final = 600
CUT_PROBE_EVENTS: Final = 6_500
CUT_PROBE_KIND: Final = 1
CUT_PROBE_TIMEOUT: Final = 30.0


class StressSettings(msgspec.Struct, frozen=True):
    disputes: int = DEFAULT_DISPUTES
    solvers: int = DEFAULT_SOLVERS
    rate: float = DEFAULT_RATE
    budget: float = DEFAULT_BUDGET
    seed: int = 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StressSettings:
        """STRESS_DISPUTES, STRESS_RATE, STRESS_BUDGET, STRESS_SEED (random when unset)."""
        env = dict(os.environ if environ is None else environ)
        seed = env.get("STRESS_SEED")
        return cls(
            disputes=int(env.get("STRESS_DISPUTES", DEFAULT_DISPUTES)),
            rate=float(env.get("STRESS_RATE", DEFAULT_RATE)),
            budget=float(env.get("STRESS_BUDGET", DEFAULT_BUDGET)),
            seed=int(seed) if seed else int.from_bytes(os.urandom(4), "big"),
        )


# --- the relays' storage ----------------------------------------------------------------------


class StorageProbe(msgspec.Struct, frozen=True):
    """What LocalRelay does with what it is given: `served_before` of `published` events come
    back from one REQ, `served_after_restart` after a restart; one connection is closed by
    the relay after `connection_cut_after` EVENTs (None: not within CUT_PROBE_EVENTS)."""

    published: int
    served_before: int
    served_after_restart: int
    connection_cut_after: int | None


async def _count_stored(url: str, author: str) -> int:
    request = ["REQ", "probe", {"kinds": [DISPUTE_KIND], "authors": [author]}]
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps(request))
        count = 0
        while True:
            frame = json.loads(await ws.get_message())
            if frame[0] == "EVENT":
                count += 1
            elif frame[0] in ("EOSE", "CLOSED"):
                return count


async def _count_until_cut(url: str, frames: Sequence[str]) -> int | None:
    """Send the frames one at a time on one connection, each after the previous OK; the
    number answered before the relay closed the connection, or None if it never did."""
    answered = 0
    with trio.fail_after(CUT_PROBE_TIMEOUT):
        async with open_websocket_url(url) as ws:
            try:
                for frame in frames:
                    await ws.send_message(frame)
                    await ws.get_message()
                    answered += 1
            except ConnectionClosed:
                return answered
    return None


def probe_connection_cut(relay: LocalRelayProcess) -> int | None:
    """Publish CUT_PROBE_EVENTS small events on one connection: LocalRelay closes a client
    connection after a fixed number of EVENTs, which the daemon (30,000 wraps per relay)
    meets several times per run, outage plan or not."""
    keys = Keys.generate()
    now = int(time.time())
    frames = [
        encode_event_message(
            sign_event(keys, created_at=now, kind=CUT_PROBE_KIND, tags=[], content=str(n))
        ).decode()
        for n in range(CUT_PROBE_EVENTS)
    ]
    return trio.run(_count_until_cut, relay.url, frames)


def probe_relay_storage(relay: LocalRelayProcess) -> StorageProbe:
    """Probe the connection cut, publish PROBE_EVENTS events under a throwaway key, count
    what one REQ serves, restart the relay (which also empties it of the probes) and count
    again: shows the per-REQ cap and whether storage survives."""
    cut_after = probe_connection_cut(relay)
    keys = Keys.generate()
    with MostroSim(keys.secret.hex(), [relay.url]) as probe:
        for _ in range(PROBE_EVENTS):
            probe.open_dispute(str(uuid.uuid4()))
    before = trio.run(_count_stored, relay.url, keys.public_hex)
    relay.stop()
    relay.start()
    after = trio.run(_count_stored, relay.url, keys.public_hex)
    return StorageProbe(
        published=PROBE_EVENTS,
        served_before=before,
        served_after_restart=after,
        connection_cut_after=cut_after,
    )


# --- the daemon ---------------------------------------------------------------------------------


def write_config(
    workdir: Path,
    *,
    mostro: Keys,
    relay_urls: Sequence[str],
    solvers: Sequence[Keys],
    health_port: int,
) -> Path:
    """The operator's config.toml (the private key comes from SERBERO_PRIVATE_KEY). No
    re-notifications during the run: every DM counted is an initial notice."""
    relays = "".join(f'[[relays]]\nurl = "{url}"\n\n' for url in relay_urls)
    solver_tables = "".join(f'[[solvers]]\npubkey = "{s.public_hex}"\n\n' for s in solvers)
    path = workdir / "config.toml"
    path.write_text(
        f'[serbero]\ndb_path = "{workdir / "serbero.db"}"\nlog_level = "info"\n\n'
        f'[mostro]\npubkey = "{mostro.public_hex}"\n\n{relays}{solver_tables}'
        "[timeouts]\nrenotification_seconds = 86400\n"
        "renotification_check_interval_seconds = 3600\n\n"
        f'[health]\nlisten = "127.0.0.1:{health_port}"\n'
    )
    path.chmod(0o600)
    return path


def read_health(port: int) -> dict[str, Any] | None:
    """The daemon's /health document (200 or 503), or None when it does not answer."""
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT) as response:
            document: dict[str, Any] = json.load(response)
            return document
    except urllib.error.HTTPError as exc:
        body: dict[str, Any] = json.load(exc)
        return body
    except (OSError, ValueError):
        return None


def relays_connected(port: int) -> int:
    health = read_health(port)
    return int(health.get("relays_connected", 0)) if health else 0


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


# --- the run ---------------------------------------------------------------------------


class StressRun:
    def __init__(self, settings: StressSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.started = time.monotonic()
        self.deadline = self.started + settings.budget
        self.workdir = Path(tempfile.mkdtemp(prefix="serbero-stress-"))

    def run(self) -> StressReport:
        """Run, print the figures, keep the directory of a failed run."""
        report: StressReport | None = None
        try:
            with ExitStack() as stack:
                observations = self._run(stack)
            report = evaluate(observations)
            return report
        finally:
            if report is not None and report.ok:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                say(f"artifacts kept in {self.workdir}")

    def _run(self, stack: ExitStack) -> Observations:
        s = self.settings
        say(
            f"stress: {s.disputes} disputes at {s.rate:g}/s over {len(RELAY_LABELS)} relays, "
            f"{s.solvers} solvers, seed {s.seed} (STRESS_SEED={s.seed} repeats the outage "
            f"plan), budget {s.budget:.0f} s, {os.cpu_count()} CPUs"
        )
        relays = [LocalRelayProcess(free_loopback_port()) for _ in RELAY_LABELS]
        for relay in relays:
            relay.start()
            stack.callback(relay.stop)
        probe = probe_relay_storage(relays[0])
        say(
            f"LocalRelay storage: one REQ served {probe.served_before} of {probe.published} "
            f"stored events; after a restart it served {probe.served_after_restart} "
            "(in-memory: a restarted relay comes back empty); it closed a client connection "
            + (
                f"after {probe.connection_cut_after} EVENTs"
                if probe.connection_cut_after is not None
                else f"not within {CUT_PROBE_EVENTS} EVENTs"
            )
        )
        gates = Gates([relay.port for relay in relays]).start()
        stack.callback(gates.stop)
        urls = gates.urls
        labels = dict(zip(urls, RELAY_LABELS, strict=True))
        say(
            "relays (through their gates): "
            + ", ".join(
                f"{label} {url} -> {relay.url}"
                for (url, label), relay in zip(labels.items(), relays, strict=True)
            )
        )

        serbero, mostro = Keys.generate(), Keys.generate()
        solvers = [Keys.generate() for _ in range(s.solvers)]
        dispute_ids = [str(uuid.uuid4()) for _ in range(s.disputes)]

        worker = InboxWorker(urls, [k.secret.hex() for k in solvers])
        stack.callback(worker.stop)
        deliveries = Deliveries(s.solvers, dispute_ids, serbero.public_hex)
        deliveries.follow(worker.stdout)

        health_port = free_loopback_port()
        config = write_config(
            self.workdir, mostro=mostro, relay_urls=urls, solvers=solvers, health_port=health_port
        )
        daemon = DaemonProcess(config, serbero)
        stack.callback(daemon.stop)
        stack.callback(self._save_log, daemon)
        daemon.wait_for_event("event_loop_started", timeout=DAEMON_READY_TIMEOUT)
        if not wait_until(lambda: relays_connected(health_port) == len(relays), 30.0):
            raise RuntimeError(f"daemon not connected to both relays: {read_health(health_port)}")
        sampler = ProcessSampler(daemon.process.pid).start()
        stack.callback(sampler.stop)

        sim = MostroSim(mostro.secret.hex(), urls).start()
        stack.callback(sim.close)
        ready_from = time.monotonic()
        time.sleep(READY_SAMPLES_SECONDS)
        ready = (ready_from, time.monotonic())

        load_seconds = s.disputes / s.rate
        plan = plan_outages(
            self.rng, len(relays), (OUTAGES_FROM, load_seconds - OUTAGES_END_BEFORE_LOAD_END)
        )
        self._print_plan(plan)
        runner = OutageRunner(relays, gates, plan)
        stack.callback(runner.stop)
        lock_plan = plan_db_locks(
            self.rng, (OUTAGES_FROM, load_seconds - OUTAGES_END_BEFORE_LOAD_END)
        )
        self._print_lock_plan(lock_plan)
        locker = DbLockRunner(str(self.workdir / "serbero.db"), lock_plan)
        stack.callback(locker.stop)
        feed = DisputeFeed(
            sim,
            dispute_ids,
            rate=s.rate,
            publishers=PUBLISHERS,
            deadline=self.deadline - TEARDOWN_RESERVE,
        )
        stack.callback(feed.stop)

        t0, t0_wall = time.monotonic(), time.time()
        say(f"load: starts at +{t0 - self.started:.1f} s")
        runner.start(t0)
        locker.start(t0)
        feed.start(t0)
        stop_reason = self._follow(t0, deliveries, feed, runner, sampler, health_port, daemon)
        finished = stop_reason is None
        delivered_at = deliveries.last_first_arrival() if finished else None
        runner.wait(max(0.0, self.deadline - TEARDOWN_RESERVE - time.monotonic()))
        runner.stop()  # every relay runs from here on
        locker.wait(max(0.0, self.deadline - TEARDOWN_RESERVE - time.monotonic()))
        locker.stop()  # the database is free from here on
        feed.stop()

        reconnect_wait = min(RECONNECT_WAIT, self.deadline - SETTLE_SECONDS - 20 - time.monotonic())
        both_up = wait_until(
            lambda: relays_connected(health_port) == len(relays), max(0.0, reconnect_wait)
        )
        settle_from = time.monotonic()
        time.sleep(SETTLE_SECONDS)
        settle = (settle_from, time.monotonic())
        sampler.stop()
        final_health = read_health(health_port)

        daemon.signal(signal.SIGTERM)
        try:
            exit_code: int | None = daemon.wait(SHUTDOWN_TIMEOUT)
        except Exception:
            exit_code = None
        published = _published_disputes(sim)
        worker.stop()
        deliveries.join(5.0)
        self._save_artifacts(published, runner, deliveries)

        db_path = self.workdir / "serbero.db"
        return Observations(
            seed=s.seed,
            disputes=s.disputes,
            solvers=s.solvers,
            rate=s.rate,
            budget=s.budget,
            elapsed=time.monotonic() - self.started,
            t0=t0,
            t0_wall=t0_wall,
            finished=finished,
            stop_reason=stop_reason,
            delivered_at=delivered_at,
            deliveries=deliveries,
            feed=feed.stats(),
            accepted_at=feed.accepted_at(),
            published=published,
            planned_outages=len(plan),
            outages=runner.records(),
            outage_errors=runner.errors(),
            planned_db_locks=len(lock_plan),
            db_locks=locker.records(),
            db_lock_errors=locker.errors(),
            records=list(daemon.records),
            urls=urls,
            samples=sampler.samples(),
            windows=(ready, (t0, delivered_at or settle_from), settle),
            both_up_at_end=both_up,
            final_health=final_health,
            exit_code=exit_code,
            db=read_database(db_path, mostro.public_hex, labels),
            db_states=dispute_states(db_path),
        )

    # --- during the run ------------------------------------------------------------------------

    def _print_plan(self, plan: Sequence[Outage]) -> None:
        say(f"outage plan (seed {self.settings.seed}), seconds from the start of the load:")
        for number, outage in enumerate(plan, 1):
            who = "+".join(RELAY_LABELS[i] for i in outage.relays)
            say(f"  {number:2}. {who:<3} down at +{outage.at:6.1f} s for {outage.seconds:.1f} s")

    def _print_lock_plan(self, plan: Sequence[DbLock]) -> None:
        say("database lock plan, seconds from the start of the load:")
        for number, lock in enumerate(plan, 1):
            say(f"  {number:2}. write lock held at +{lock.at:6.1f} s for {lock.seconds:.1f} s")

    def _follow(
        self,
        t0: float,
        deliveries: Deliveries,
        feed: DisputeFeed,
        runner: OutageRunner,
        sampler: ProcessSampler,
        health_port: int,
        daemon: DaemonProcess,
    ) -> str | None:
        """Progress lines until every solver holds every dispute (None), or why it stopped:
        the budget, a dead daemon, or a stall (nothing owed, nothing arriving)."""
        stop_at = self.deadline - TEARDOWN_RESERVE
        last_pairs, last_progress = 0, time.monotonic()
        while not deliveries.complete.wait(
            min(PROGRESS_EVERY, max(0.0, stop_at - time.monotonic()))
        ):
            now = time.monotonic()
            health = read_health(health_port) or {}
            queues = health.get("queues", {})
            sample = sampler.latest()
            pairs = deliveries.pairs()
            if pairs != last_pairs:
                last_pairs, last_progress = pairs, now
            say(
                f"  +{now - t0:6.1f} s  published {feed.stats().published:6}  "
                f"delivered {pairs:6}/{deliveries.pairs_expected}  "
                f"owed {queues.get('outbox_pending')}  "
                f"failed {health.get('deliveries', {}).get('failed')}  "
                f"daemon links {health.get('relays_connected')}/{len(RELAY_LABELS)}  "
                f"relays down {'+'.join(RELAY_LABELS[i] for i in runner.down()) or '-'}  "
                + (f"rss {sample.rss_mb:.1f} MB fds {sample.fds}" if sample else "")
            )
            if daemon.process.poll() is not None:
                return f"the daemon exited with status {daemon.process.returncode}"
            idle = (
                feed.done()
                and runner.done()
                and queues.get("outbox_pending") == 0
                and queues.get("outbox_in_flight") == 0
            )
            if idle and now - last_progress >= STALL_SECONDS:
                return (
                    f"stalled: nothing owed by the daemon and no new DM for "
                    f"{now - last_progress:.0f} s"
                )
            if now >= stop_at:
                return f"budget reached at +{now - self.started:.0f} s"
        return None

    # --- artifacts -----------------------------------------------------------------------------

    def _save_log(self, daemon: DaemonProcess) -> None:
        with (self.workdir / "daemon-log.jsonl").open("w") as log:
            for record in list(daemon.records):
                log.write(json.dumps(record) + "\n")

    def _save_artifacts(
        self, published: list[PublishedDispute], runner: OutageRunner, deliveries: Deliveries
    ) -> None:
        (self.workdir / "published.json").write_bytes(msgspec.json.encode(published))
        (self.workdir / "outages.json").write_bytes(msgspec.json.encode(runner.records()))
        (self.workdir / "missing.json").write_bytes(msgspec.json.encode(deliveries.missing()))


def _published_disputes(sim: MostroSim) -> list[PublishedDispute]:
    published = []
    for event in sim.events():
        dispute_id = next(tag[1] for tag in event.tags if tag[0] == "d")
        published.append(
            PublishedDispute(
                dispute_id=dispute_id, created_at=event.created_at, relays=len(event.accepted_by)
            )
        )
    return published
