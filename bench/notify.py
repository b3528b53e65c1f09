"""Notification throughput, latency and memory: the serbero daemon next to a baseline notifier.

    .venv/bin/python -m bench.notify [--burst 300] [--sequential 20] [--rss-disputes 10000]

One run, one LocalRelay (rust-nostr, its own process), five solvers. The two notifiers are
(a) the real `serbero` daemon as a subprocess, exactly as an operator starts it, and (b)
`BaselineNotifier` (nostr-sdk) in its own process: the minimal reference behaviour, one NIP-17
DM per solver sent one after the other, each awaiting the relay's OK. Each notifier watches
its own simulated Mostro key, so they share the relay and the solvers but never each other's
disputes, and they are measured one after the other, never at the same time.

The solver inboxes (nostr-sdk `SolverInbox`, six of them: five plus the memory run's one)
each live in a process of their own, as solvers are separate clients: inboxes sharing one
process take turns with the interpreter, and then five wraps sent at once reached them about
1 ms apart each while a bare websocket client on the same relay had all five within 0.3 ms;
an inbox in the same process as a notifier would also compete with it. Each notes the
`time.monotonic()` at which a gift wrap reaches it (a clock all processes on the machine
share) and opens the wraps only after the measurement (`HeldInbox`): every DM is still
decrypted and checked (right sender, right dispute) before a figure is printed, but the
solvers' decryption does not compete with the notifier for the CPU. The simulated Mostro
(`MostroSim`) publishes from this process.

Figures, printed next to their targets (issue #5):
- burst: N disputes published at once: the simulated Mostro signs them before the clock
  starts, then has every publish in flight together (`MostroSim.publish_signed`); DMs/s from
  the first publish until every solver holds a DM for every dispute. Target >= 3x the
  baseline. (Signing them as they went out, from 32 threads, cost this process ~0.5 CPU-s
  and ~0.6 s for 300 disputes, CPU the notifier under test did not get.)
- sequential: disputes one at a time; detect -> DM latency, from the moment the notifier
  has the event until the DM reached the last of the five solvers. Detection is the
  daemon's `event_received` log line (its wall-clock timestamp placed on the monotonic
  clock with the offset read just before that dispute) and, for the baseline, the monotonic
  time its nostr-sdk handler got the event. Also printed, for reference: publish -> DM,
  from handing the event to the relay (the same ~3 ms of relay delivery added to both).
  After each dispute is complete we wait GAP_MS (>= 60 ms) before the next, so TCP
  delayed-ACK timers from the previous exchange never inflate the next sample. Median and
  p95 (nearest rank). Target: detect -> DM median <= 0.5x the baseline.
- memory: a fresh daemon with ONE solver is given 10,000 disputes, published straight to the
  relay at RSS_PACE a second (32 at a time over RSS_CONNECTIONS Mostro connections), and we
  wait until that solver holds all 10,000 DMs; then VmHWM (peak) and VmRSS from
  /proc/<pid>/status. Target: VmHWM <= 80 MB. LocalRelay drops the daemon's connection
  after about 6,000 published DMs, and the daemon pages back what it missed meanwhile; a
  REQ returns at most 500 stored events and `until` cannot split a second, so a flood of
  more than 500 disputes in one second (as fast as the relay took them, ~600 a second) lost
  the ones that fell in the gap: the pace keeps every second below that cap. Should
  something still be lost, the run does not wait forever: when no DM arrived for
  RSS_STALL_SECONDS it reports memory as it is, says how many dispute events the daemon
  received and how many DMs it sent, and counts the run as incomplete (not all targets met).

With `--mediation` (issue #16: the core path keeps its figures with mediation on) the run
is different: no baseline and no memory run, but rounds on fresh daemons with mediation off
and on, interleaved (`--rounds` of each), each a warm-up dispute, sequential disputes, then
a burst. With mediation on the daemon runs [mediation] and [reasoning] against the scripted
model (`tests.support.scripted_llm` in its own process, answering a classification that asks
both parties a question after `--model-delay` seconds) and the simulated Mostro answers
takes, so every dispute also opens a session: the verdict, the take, Mostro's `in-progress`
and with it a second DM to every solver (the dispute was taken), and the opening message to
each party. The rate counts the new disputes' DMs; the wraps are opened only once the second
DMs are in too. Sequential disputes wait for both. The figures: each mode's burst rate
(median and range over rounds) and detect -> DM (median and p95 of every sample), and the
ratios on/off beside the target: within 10 %.

Under each burst and sequential figure, a CPU line (`CpuMeter`): CPU-seconds used by the
notifier under test (and per DM), by the rest of this bench, and by other work on the
machine over the same span (for a burst, until the last wrap arrived). The burst is
CPU-bound on a small machine, so a busy neighbour lowers it; the line says how much there
was (it corrects nothing).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Final

import msgspec
import nostr_sdk

from bench.daemon_process import DATABASE_FILE, DaemonProcess
from bench.reasoning import ASK_ANSWER, server_process
from serbero.protocol.keys import Keys
from tests.support.baseline_notifier import BaselineNotifier
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port
from tests.support.solver_inbox import ReceivedDm, SolverInbox

SOLVERS: Final = 5
BURST: Final = 300
SEQUENTIAL: Final = 20
RSS_DISPUTES: Final = 10_000
GAP_MS: Final = 100
PUBLISHERS: Final = 32
# rust-nostr's LocalRelay drops a client connection after about 6,000 published events, so
# the 10,000 disputes go out over several Mostro connections (2,500 each).
RSS_CONNECTIONS: Final = 4
# Disputes a second in the memory run: below the 500 events one REQ returns, so the daemon
# can page back every second of the gap when LocalRelay drops its connection.
RSS_PACE: Final = 400

TARGET_THROUGHPUT_RATIO: Final = 3.0
TARGET_LATENCY_RATIO: Final = 0.5
TARGET_RSS_MB: Final = 80.0

READY_TIMEOUT: Final = 30.0
OPEN_TIMEOUT: Final = 300.0
BURST_TIMEOUT: Final = 180.0
DISPUTE_TIMEOUT: Final = 15.0
RSS_TIMEOUT: Final = 600.0
# The memory run gives up when no DM arrived for this long (something was lost on the way).
RSS_STALL_SECONDS: Final = 60.0
# With mediation on, a dispute's take (the model's answer, then Mostro's) and its notice
# follow the new dispute's DM; a round stops when none of them arrived for this long.
FOLLOW_UP_STALL: Final = 30.0
# --mediation: rounds per mode, the scripted model's answer time, the allowed cost.
MEDIATION_ROUNDS: Final = 3
MODEL_DELAY: Final = 0.2
TARGET_MEDIATION_COST: Final = 0.10
REASONING_KEY_ENV: Final = "BENCH_REASONING_API_KEY"
SESSION_OPENED: Final = "mediation_session_opened"
# After a burst, the next figure waits until the daemon is this quiet.
QUIET_CPU_SHARE: Final = 0.05
QUIET_WINDOW: Final = 0.5
QUIET_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 10.0

TROUBLE_EVENTS: Final = ("relay_disconnected", "notification_failed")
DISPUTE_LINE: Final = re.compile(r"^dispute_id: (\S+)$", re.MULTILINE)
# The first line of a new dispute's notification: what the figures time. Any other DM (a
# dispute taken by Serbero's mediation is announced to every solver) is only counted.
INITIAL_HEADLINE: Final = "New Mostro dispute:"


# --- child process roles -------------------------------------------------------------------


class HeldInbox(SolverInbox):
    """A solver inbox that notes when each gift wrap arrives and opens it only when asked.

    Opening a wrap costs the solver about 1 ms in nostr-sdk; done on arrival, five inboxes
    would compete with the notifier for the CPU during the very burst being measured. The
    arrival time is what counts: the DM is in the solver's client then. Every wrap is still
    opened (before any figure is computed) and must be the expected DM from the expected
    sender.
    """

    def __init__(
        self, secret_hex: str, relay_urls: Sequence[str], on_arrival: Callable[[float], None]
    ) -> None:
        super().__init__(secret_hex, relay_urls)
        self._on_arrival = on_arrival
        self._held: list[nostr_sdk.Event] = []
        self._arrived: dict[str, float] = {}
        self._reported = 0

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        wrap_id = event.id().to_hex()
        if wrap_id in self._arrived:
            return
        at = time.monotonic()
        self._arrived[wrap_id] = at
        self._held.append(event)
        self._on_arrival(at)

    async def _open_held(self) -> None:
        held, self._held = self._held, []
        for event in held:
            await super()._on_event(event)

    def open_held(self) -> list[tuple[ReceivedDm, float]]:
        """Open every wrap held so far: (DM, arrival time) for each one not reported yet."""
        self._call(self._open_held(), OPEN_TIMEOUT)
        dms = self.messages()
        fresh, self._reported = dms[self._reported :], len(dms)
        return [(dm, self._arrived[dm.wrap_id]) for dm in fresh]


def inbox_role(relay_url: str, index: str, secret: str) -> None:
    """One solver's inbox (solver number `index`). Prints `["wrap", index, monotonic]` as
    each wrap arrives; on an `open` line from the bench, opens what arrived and prints
    `["dm", index, sender, dispute_id, arrival]` per new dispute's notification (any other
    DM: `["other", index, sender, headline, arrival]`), then `["opened"]`."""
    solver = int(index)
    lock = threading.Lock()

    def emit(*record: object) -> None:
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()

    inbox = HeldInbox(secret, [relay_url], functools.partial(emit, "wrap", solver))
    inbox.start()
    print("ready", flush=True)
    for command in sys.stdin:  # until the bench closes our stdin
        if command.strip() != "open":
            continue
        for dm, arrived in inbox.open_held():
            match = DISPUTE_LINE.search(dm.content)
            dispute_id = match.group(1) if match else ""
            headline = dm.content.split("\n", 1)[0]
            if headline.startswith(INITIAL_HEADLINE):
                emit("dm", solver, dm.sender_hex, dispute_id, arrived)
            else:
                emit("other", solver, dm.sender_hex, headline, arrived)
        emit("opened")
    inbox.close()


def baseline_role(relay_url: str, secret: str, mostro: str, solvers: Sequence[str]) -> None:
    """The baseline notifier. On a `detections` line from the bench, prints one JSON object:
    when each dispute it notified reached it (`time.monotonic()`), by dispute id."""
    with BaselineNotifier(secret, mostro, solvers, [relay_url]) as notifier:
        print("ready", flush=True)
        for command in sys.stdin:  # until the bench closes our stdin
            if command.strip() == "detections":
                print(json.dumps(notifier.detections()), flush=True)
        summary = {
            "sent": notifier.sent_count(),
            "failed": notifier.failed_count(),
            "errors": notifier.errors()[:3],
        }
    print(json.dumps(summary), flush=True)


# --- the bench's side of the child processes ---------------------------------------------


class Child:
    """A bench script (this one unless `module` names another) in another role; it prints
    `ready`, then serves until stdin closes."""

    def __init__(self, role: str, *args: str, module: str = "bench.notify") -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise RuntimeError(f"{role} process did not start (said {line!r})")

    @property
    def stdin(self) -> IO[str]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def ask(self, command: str) -> str:
        """Send one command line and read its one-line answer."""
        self.stdin.write(command + "\n")
        self.stdin.flush()
        return self.stdout.readline()

    def stop(self, *, read_rest: bool = False) -> str:
        """Close its stdin, wait for it; what it printed last when `read_rest`."""
        self.stdin.close()
        rest = self.stdout.read() if read_rest else ""
        self.process.wait(STOP_TIMEOUT)
        return rest


def _grew(count: Callable[[], int], since: int) -> bool:
    return count() > since


class OtherDm(msgspec.Struct, frozen=True):
    """A DM other than a new dispute's notification: who got it from whom, its first line
    and when its wrap arrived (`time.monotonic()`)."""

    solver: int
    sender: str
    headline: str
    arrived: float


class Deliveries:
    """The inbox processes seen from here: wrap arrivals counted per solver as they come,
    new disputes' DMs (sender, dispute id, arrival time) once opened, other DMs counted by
    headline."""

    def __init__(self, inboxes: Sequence[Child]) -> None:
        self._inboxes = tuple(inboxes)
        self._cond = threading.Condition()
        self._wraps: dict[int, int] = {}
        self._arrivals: dict[tuple[str, str], dict[int, float]] = {}
        self._others: dict[str, int] = {}
        self._other_arrivals: list[OtherDm] = []
        self._opened = 0
        for inbox in self._inboxes:
            threading.Thread(target=self._read, args=(inbox.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            record = json.loads(line)
            with self._cond:
                if record[0] == "wrap":
                    solver = record[1]
                    self._wraps[solver] = self._wraps.get(solver, 0) + 1
                elif record[0] == "dm":
                    _, solver, sender, dispute_id, at = record
                    self._arrivals.setdefault((sender, dispute_id), {}).setdefault(solver, at)
                elif record[0] == "other":
                    _, solver, sender, headline, at = record
                    self._others[headline] = self._others.get(headline, 0) + 1
                    self._other_arrivals.append(OtherDm(solver, sender, headline, at))
                elif record[0] == "opened":
                    self._opened += 1
                self._cond.notify_all()

    def others(self) -> dict[str, int]:
        """DMs other than a new dispute's notification opened so far, by headline."""
        with self._cond:
            return dict(self._others)

    def other_arrivals(self) -> list[OtherDm]:
        """Every DM other than a new dispute's notification opened so far, in order."""
        with self._cond:
            return list(self._other_arrivals)

    def counts(self) -> dict[int, int]:
        """Wraps arrived so far per solver: take this before publishing."""
        with self._cond:
            return dict(self._wraps)

    def wait_arrivals(
        self, before: dict[int, int], solvers: Sequence[int], needed: int, stall: float
    ) -> bool:
        """Block until each solver got `needed` wraps more than in `before`, or none arrived
        for `stall` seconds; whether they all arrived."""

        def arrived() -> bool:
            return all(self._wraps.get(s, 0) - before.get(s, 0) >= needed for s in solvers)

        def total() -> int:
            return sum(self._wraps.values())

        with self._cond:
            while not arrived():
                seen = total()
                if not self._cond.wait_for(functools.partial(_grew, total, seen), stall):
                    return False
            return True

    def _open(self, timeout: float) -> None:
        with self._cond:
            target = self._opened + len(self._inboxes)
        for inbox in self._inboxes:
            inbox.stdin.write("open\n")
            inbox.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: self._opened >= target, timeout):
                raise TimeoutError("the inboxes did not open their wraps in time")

    def wait_complete(
        self,
        before: dict[int, int],
        sender: str,
        dispute_ids: Sequence[str],
        solvers: Sequence[int],
        timeout: float,
        on_arrival: Callable[[], None] | None = None,
    ) -> float:
        """Block until every solver holds a DM from `sender` for every dispute; the last
        arrival time. `before` is `counts()` from before the disputes were published;
        `on_arrival` runs once enough wraps arrived, before they are opened."""
        deadline = time.monotonic() + timeout
        needed = len(dispute_ids)

        def arrived() -> bool:
            return all(self._wraps.get(s, 0) - before.get(s, 0) >= needed for s in solvers)

        while True:
            with self._cond:
                self._cond.wait_for(arrived, max(0.0, deadline - time.monotonic()))
            if on_arrival is not None:
                on_arrival()
            self._open(OPEN_TIMEOUT)
            with self._cond:
                missing = [
                    d
                    for d in dispute_ids
                    for s in solvers
                    if s not in self._arrivals.get((sender, d), {})
                ]
                if not missing:
                    return max(self._arrivals[(sender, d)][s] for d in dispute_ids for s in solvers)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(missing)} of {len(dispute_ids) * len(solvers)} DMs missing "
                    f"after {timeout:.0f}s"
                )
            # Some wraps were something else (late or unexpected DMs): wait for more.
            needed += math.ceil(len(missing) / len(solvers))


def daemon_config(serbero: Keys, mostro: Keys, relay: str, solvers: Sequence[Keys]) -> str:
    solver_tables = "".join(f'[[solvers]]\npubkey = "{s.public_hex}"\n\n' for s in solvers)
    return (
        f'[serbero]\nprivate_key = "{serbero.secret.hex()}"\ndb_path = "{DATABASE_FILE}"\n'
        f'log_level = "info"\n\n[mostro]\npubkey = "{mostro.public_hex}"\n\n'
        f'[[relays]]\nurl = "{relay}"\n\n{solver_tables}'
        # No reminders during the bench: every DM measured is an initial notification.
        "[timeouts]\nrenotification_seconds = 86400\n"
        "renotification_check_interval_seconds = 3600\n"
    )


# --- CPU accounting -------------------------------------------------------------------------

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU-seconds (user + system, every thread) process `pid` used so far; 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def machine_busy() -> float:
    """CPU-seconds every CPU of the machine spent busy (not idle, not waiting on I/O)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / CLOCK_TICKS


class CpuMeter:
    """Who used the CPU while a figure was taken: the notifier under test, the rest of this
    bench (relay, inboxes, MostroSim, the other notifier idling) and everything else on the
    machine. The figures are CPU-bound, so other work on the machine lowers them; this
    says how much there was, it does not correct for it."""

    def __init__(self, notifier_pid: int) -> None:
        self._notifier = notifier_pid
        self._pids = process_tree(os.getpid())
        self._start = time.monotonic()
        self._machine = machine_busy()
        self._cpu = {pid: process_cpu(pid) for pid in self._pids}
        self._stopped: tuple[float, float, dict[int, float]] | None = None

    def stop(self) -> None:
        """End the span (the first call counts): before the wraps are opened, say."""
        if self._stopped is None:
            used = {pid: process_cpu(pid) - before for pid, before in self._cpu.items()}
            self._stopped = (time.monotonic() - self._start, machine_busy() - self._machine, used)

    def notifier_seconds(self) -> float:
        """CPU-seconds the notifier under test used over the span."""
        self.stop()
        assert self._stopped is not None
        return self._stopped[2].get(self._notifier, 0.0)

    def report(self, dms: int) -> str:
        self.stop()
        assert self._stopped is not None
        elapsed, machine, used = self._stopped
        notifier = used.get(self._notifier, 0.0)
        bench = sum(used.values()) - notifier
        other = max(0.0, machine - notifier - bench)
        return (
            f"CPU-s: notifier {notifier:.2f} ({notifier / dms * 1000:.2f} ms a DM), "
            f"rest of the bench {bench:.2f}, other work on the machine {other:.2f}; "
            f"{os.cpu_count()} CPUs x {elapsed:.2f} s"
        )


# --- measurements -------------------------------------------------------------------------


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def publish_all(
    mostros: Sequence[MostroSim], dispute_ids: Sequence[str], per_second: float
) -> None:
    """Open every dispute, PUBLISHERS at a time, spread over the given MostroSim peers (each
    is thread-safe and has its own relay connection), none before its turn at `per_second`."""
    start = time.monotonic()

    def open_one(index: int) -> None:
        wait = start + index / per_second - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        mostros[index % len(mostros)].open_dispute(dispute_ids[index])

    with concurrent.futures.ThreadPoolExecutor(PUBLISHERS) as pool:
        for _ in pool.map(open_one, range(len(dispute_ids))):
            pass


class Target(msgspec.Struct, frozen=True):
    """One notifier under test: the Mostro it watches, its own key (the DMs' sender) and
    the inbox indices of its solvers."""

    mostro: MostroSim
    sender: str
    solvers: tuple[int, ...]


def warm_up(target: Target, deliveries: Deliveries, per_dispute: int = 1) -> None:
    """One dispute end to end: connections, subscriptions and caches are live. With
    `per_dispute` > 1 each solver must also get the DMs that follow a new dispute's (with
    mediation on: the notice that Serbero took it), else the run stops here."""
    before = deliveries.counts()
    [dispute_id] = new_ids(1)
    target.mostro.open_dispute(dispute_id)
    deliveries.wait_complete(before, target.sender, [dispute_id], target.solvers, READY_TIMEOUT)
    if not wait_follow_ups(deliveries, before, target, 1, per_dispute):
        raise RuntimeError(
            f"expected {per_dispute} DMs per dispute and solver; none arrived for "
            f"{FOLLOW_UP_STALL:g} s (with mediation on: did the daemon take the dispute?)"
        )


def wait_follow_ups(
    deliveries: Deliveries, before: dict[int, int], target: Target, disputes: int, per_dispute: int
) -> bool:
    """Until each solver got `per_dispute` DMs for each of `disputes` new disputes, or none
    arrived for FOLLOW_UP_STALL s; whether they all arrived. (A take the relay's dropped
    connection failed is retried a minute later: its notice is late, the figures stand.)"""
    return per_dispute == 1 or deliveries.wait_arrivals(
        before, target.solvers, disputes * per_dispute, FOLLOW_UP_STALL
    )


def burst(
    target: Target, deliveries: Deliveries, count: int, notifier_pid: int, per_dispute: int = 1
) -> tuple[float, float, CpuMeter]:
    """(DMs per second, seconds, the CPU used) for `count` disputes opened at once; the
    meter runs from the first publish until the last wrap arrived. With `per_dispute` > 1
    the wraps are opened only once every follow-up DM arrived too (opening them earlier
    would take CPU from the daemon mid-burst); the rate counts new disputes' DMs only."""
    dispute_ids = new_ids(count)
    # Signed before the clock starts: what is measured is the notifier, not the signing.
    events = [target.mostro.sign_opening(dispute_id) for dispute_id in dispute_ids]
    before = deliveries.counts()
    meter = CpuMeter(notifier_pid)
    start = time.monotonic()
    target.mostro.publish_signed(events)
    wait_follow_ups(deliveries, before, target, count, per_dispute)
    last = deliveries.wait_complete(
        before, target.sender, dispute_ids, target.solvers, BURST_TIMEOUT, meter.stop
    )
    elapsed = last - start
    return count * len(target.solvers) / elapsed, elapsed, meter


class Sample(msgspec.Struct, frozen=True):
    """One sequential dispute: its ids, when it was handed to the relay and when its DM
    reached the last solver (`time.monotonic()`), and `wall_offset`, `time.time()` minus
    `time.monotonic()` just before, to place the daemon's log timestamps on that clock."""

    dispute_id: str
    event_id: str
    published: float
    last_dm: float
    wall_offset: float


def sequential(
    target: Target, deliveries: Deliveries, count: int, per_dispute: int = 1
) -> list[Sample]:
    """Each dispute published once the previous one's DMs (`per_dispute` per solver) are all
    in, and GAP_MS more."""
    samples = []
    for dispute_id in new_ids(count):
        before = deliveries.counts()
        wall_offset = time.time() - time.monotonic()
        published = time.monotonic()
        event_id = target.mostro.open_dispute(dispute_id)
        last = deliveries.wait_complete(
            before, target.sender, [dispute_id], target.solvers, DISPUTE_TIMEOUT
        )
        wait_follow_ups(deliveries, before, target, 1, per_dispute)
        samples.append(Sample(dispute_id, event_id, published, last, wall_offset))
        time.sleep(GAP_MS / 1000)
    return samples


def serbero_detections(log_path: Path, samples: Sequence[Sample]) -> dict[str, float]:
    """When the daemon took up each sampled dispute's event (its `event_received` line, the
    first thing ingest does with a verified event from the Mostro key), on the monotonic
    clock, by dispute id."""
    by_event = {sample.event_id: sample for sample in samples}
    found: dict[str, float] = {}
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        sample = by_event.get(record.get("event_id", ""))
        if record.get("event") != "event_received" or sample is None:
            continue
        wall = datetime.datetime.fromisoformat(record["timestamp"]).timestamp()
        found.setdefault(sample.dispute_id, wall - sample.wall_offset)
    return found


def latencies_ms(samples: Sequence[Sample], detected: dict[str, float] | None) -> list[float]:
    """Publish -> last DM, or detection -> last DM when `detected` is given."""
    if detected is None:
        return [(sample.last_dm - sample.published) * 1000 for sample in samples]
    missing = [sample.dispute_id for sample in samples if sample.dispute_id not in detected]
    if missing:
        raise RuntimeError(f"no detection time for {len(missing)} disputes, e.g. {missing[0]}")
    return [(sample.last_dm - detected[sample.dispute_id]) * 1000 for sample in samples]


def p95(samples: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISS"


# --- mediation off and on, interleaved (issue #16) -----------------------------------------


def mediation_config(model_url: str) -> str:
    """[mediation] and [reasoning] on, against the scripted model at `model_url`; every
    other mediation setting is an operator's default."""
    return (
        "\n[mediation]\nenabled = true\n\n[reasoning]\nenabled = true\n"
        f'provider = "openai"\nmodel = "scripted"\napi_base = "{model_url}"\n'
        f'api_key_env = "{REASONING_KEY_ENV}"\n'
    )


def wait_quiet(pid: int) -> float:
    """Until process `pid` used less than QUIET_CPU_SHARE of a CPU over QUIET_WINDOW (the
    work a burst left behind, such as opening its mediation sessions); seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < QUIET_TIMEOUT:
        used = process_cpu(pid)
        time.sleep(QUIET_WINDOW)
        if process_cpu(pid) - used < QUIET_CPU_SHARE * QUIET_WINDOW:
            break
    return time.monotonic() - start


class RoundFigures(msgspec.Struct, frozen=True):
    """One round on a fresh daemon: the burst's rate and the daemon's CPU per DM until
    every DM it caused was in, each sequential dispute's detect -> DM, and what mediation
    did (sessions opened, takes Mostro answered, other DMs the solvers got)."""

    mediation: bool
    burst_rate: float
    cpu_ms_per_dm: float
    detect_ms: list[float]
    sessions: int
    takes: int
    other_dms: int


def spread(values: Sequence[float], unit: str, digits: int = 0) -> str:
    """`median unit (min-max)`."""
    return (
        f"{statistics.median(values):.{digits}f} {unit} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def print_mediation_summary(rounds: Sequence[RoundFigures], disputes: int) -> bool:
    """Each mode's figures with their spread over the rounds, the on/off ratios beside
    the 10 % target; whether both are met."""
    modes = {on: [r for r in rounds if r.mediation is on] for on in (False, True)}
    rates = {on: statistics.median(r.burst_rate for r in modes[on]) for on in modes}
    pooled = {on: [ms for r in modes[on] for ms in r.detect_ms] for on in modes}
    for on, label in ((False, "off"), (True, "on ")):
        print(
            f"  mediation {label}  burst {spread([r.burst_rate for r in modes[on]], 'DM/s')}"
            f"   detect -> DM median {statistics.median(pooled[on]):.1f} ms, p95 "
            f"{p95(pooled[on]):.1f} ms; round medians "
            f"{spread([statistics.median(r.detect_ms) for r in modes[on]], 'ms', 1)}"
        )
    burst_ratio = rates[True] / rates[False]
    latency_ratio = statistics.median(pooled[True]) / statistics.median(pooled[False])
    burst_ok = burst_ratio >= 1 - TARGET_MEDIATION_COST
    latency_ok = latency_ratio <= 1 + TARGET_MEDIATION_COST
    print(
        f"  burst on/off          {burst_ratio:5.2f} x   target >= "
        f"{1 - TARGET_MEDIATION_COST:.2f}x  {verdict(burst_ok)}"
    )
    print(
        f"  detect -> DM on/off   {latency_ratio:5.2f} x   target <= "
        f"{1 + TARGET_MEDIATION_COST:.2f}x  {verdict(latency_ok)}"
    )
    opened = [r.sessions for r in modes[True]]
    if min(opened) < disputes:
        print(
            f"  sessions opened per round {opened} of {disputes}: LocalRelay drops a client "
            "that was sent ~6,000 events (the chat passes' fetches), and a take caught in "
            "that is retried a minute later, after the round"
        )
    return burst_ok and latency_ok


# --- the run -------------------------------------------------------------------------------


class Bench:
    """The whole run; every process it starts is stopped again, in reverse order."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.cleanups: list[Callable[[], object]] = []
        self.daemons: list[DaemonProcess] = []
        self.model_url = ""

    def run(self) -> int:
        try:
            return self._run()
        except BaseException:
            for daemon in self.daemons:
                print(f"--- last lines of {daemon.log_path}", file=sys.stderr)
                print(*daemon.log_path.read_text().splitlines()[-15:], sep="\n", file=sys.stderr)
            raise
        finally:
            self._clean_up()

    def _clean_up(self) -> None:
        while self.cleanups:
            self.cleanups.pop()()

    def _daemon(
        self, name: str, config: str, extra_env: dict[str, str] | None = None
    ) -> DaemonProcess:
        daemon = DaemonProcess(self.workdir / name, config, extra_env)
        self.daemons.append(daemon)
        self.cleanups.append(daemon.stop)
        daemon.wait_ready()
        return daemon

    def _mostro(self, keys: Keys, url: str) -> MostroSim:
        mostro = MostroSim(keys.secret.hex(), [url]).start()
        self.cleanups.append(mostro.close)
        return mostro

    def _relay_and_inboxes(self, solvers: Sequence[Keys]) -> tuple[str, Deliveries]:
        relay = LocalRelayProcess(free_loopback_port())
        relay.start()
        self.cleanups.append(relay.stop)
        inboxes = []
        for index, keys in enumerate(solvers):
            inbox = Child("inbox", relay.url, str(index), keys.secret.hex())
            self.cleanups.append(inbox.stop)
            inboxes.append(inbox)
        return relay.url, Deliveries(inboxes)

    def _mediation_round(
        self, on: bool, name: str, url: str, solvers: Sequence[Keys], deliveries: Deliveries
    ) -> RoundFigures:
        """Warm-up, sequential disputes and a burst on a fresh daemon and a fresh Mostro key
        (no round sees another's disputes). With mediation on, every dispute also opens a
        session: the model answers, Serbero takes it, Mostro publishes `in-progress` and
        every solver gets the notice that it was taken, so each solver gets 2 DMs a dispute."""
        args = self.args
        serbero, mostro_keys = Keys.generate(), Keys.generate()
        config = daemon_config(serbero, mostro_keys, url, solvers)
        if on:
            config += mediation_config(self.model_url)
        daemon = self._daemon(name, config, {REASONING_KEY_ENV: "sk-bench"})
        mostro = MostroSim(mostro_keys.secret.hex(), [url], answer_takes=True).start()
        try:
            if on:
                daemon.wait_event("mediation_ready")
            per_dispute = 2 if on else 1
            target = Target(mostro, serbero.public_hex, tuple(range(len(solvers))))
            others = sum(deliveries.others().values())
            warm_up(target, deliveries, per_dispute)
            pid = daemon.process.pid
            # Sequential first: with mediation on, a burst leaves hundreds of sessions to
            # open and poll for a minute after its DMs are out; detect -> DM is the cost
            # of mediating each dispute as it comes, not of that backlog.
            samples = sequential(target, deliveries, args.sequential, per_dispute)
            detect = latencies_ms(samples, serbero_detections(daemon.log_path, samples))
            wait_quiet(pid)
            rate, _, meter = burst(target, deliveries, args.burst, pid, per_dispute)
            cpu_ms = meter.notifier_seconds() / (args.burst * len(solvers)) * 1000
            opened = daemon.count_events(SESSION_OPENED)[SESSION_OPENED]
            takes = len(mostro.take_requests())
        finally:
            mostro.close()
            daemon.stop()
        other_dms = sum(deliveries.others().values()) - others
        return RoundFigures(on, rate, cpu_ms, detect, opened, takes, other_dms)

    def _run_mediation(self) -> int:
        args = self.args
        solvers = [Keys.generate() for _ in range(SOLVERS)]
        url, deliveries = self._relay_and_inboxes(solvers)
        model = contextlib.ExitStack()
        self.cleanups.append(model.close)
        self.model_url = model.enter_context(server_process(ASK_ANSWER, args.model_delay))
        disputes = 1 + args.burst + args.sequential
        print(
            f"bench/notify.py --mediation: the serbero daemon with mediation off and on, "
            f"{args.rounds} rounds each, interleaved; one LocalRelay, {SOLVERS} solvers, "
            f"{os.cpu_count()} CPUs"
        )
        print(
            f"  each round: a fresh daemon; 1 warm-up dispute, {args.sequential} sequential "
            f"({GAP_MS} ms apart), then a burst of {args.burst}"
        )
        print(
            f"  mediation on: the scripted model (its own process) answers after "
            f"{args.model_delay * 1000:.0f} ms with a clarification request, Mostro answers "
            "the take; each solver gets the dispute's DM and then the notice that it was "
            "taken"
        )
        print()
        rounds: list[RoundFigures] = []
        for pair in range(args.rounds):
            # Pairs alternate which mode goes first, so a drift over the run (the relay
            # holding more events each round) weighs on both alike.
            for on in (False, True) if pair % 2 == 0 else (True, False):
                mode = "on" if on else "off"
                figures = self._mediation_round(
                    on, f"round-{pair + 1}-{mode}", url, solvers, deliveries
                )
                rounds.append(figures)
                print(
                    f"  round {pair + 1} {mode:<3}  burst {figures.burst_rate:6.0f} DM/s "
                    f"({figures.cpu_ms_per_dm:.2f} ms CPU a DM)   detect -> DM median "
                    f"{statistics.median(figures.detect_ms):5.1f} ms, p95 "
                    f"{p95(figures.detect_ms):5.1f} ms   sessions {figures.sessions}/"
                    f"{disputes if on else 0}, takes {figures.takes}, other DMs "
                    f"{figures.other_dms}"
                )
        print()
        all_ok = print_mediation_summary(rounds, disputes)
        print(f"targets: {'all met' if all_ok else 'NOT all met'}")
        return 0

    def _run(self) -> int:
        args = self.args
        if args.mediation:
            return self._run_mediation()
        solvers = [Keys.generate() for _ in range(SOLVERS)]
        rss_solver = Keys.generate()
        solver_indices = tuple(range(SOLVERS))
        rss_indices = (SOLVERS,)
        serbero, baseline = Keys.generate(), Keys.generate()
        mostro_a, mostro_b, mostro_c = Keys.generate(), Keys.generate(), Keys.generate()
        url, deliveries = self._relay_and_inboxes([*solvers, rss_solver])

        daemon = self._daemon("serbero", daemon_config(serbero, mostro_a, url, solvers))
        notifier = Child(
            "baseline",
            url,
            baseline.secret.hex(),
            mostro_b.public_hex,
            *(k.public_hex for k in solvers),
        )
        baseline_summary: list[str] = []
        self.cleanups.append(lambda: baseline_summary.append(notifier.stop(read_rest=True)))

        ours = Target(self._mostro(mostro_a, url), serbero.public_hex, solver_indices)
        theirs = Target(self._mostro(mostro_b, url), baseline.public_hex, solver_indices)
        warm_up(ours, deliveries)
        warm_up(theirs, deliveries)

        print(
            "bench/notify.py: serbero daemon vs baseline notifier (nostr-sdk, sequential DMs); "
            f"one LocalRelay, {SOLVERS} solvers, {os.cpu_count()} CPUs"
        )
        print(
            "  processes: relay | one per solver inbox | serbero | baseline | this one (MostroSim)"
        )
        print("  a DM counts when its gift wrap reaches the solver's client (opened afterwards)")
        print()

        burst_dms = args.burst * SOLVERS
        print(f"burst: {args.burst} disputes at once -> {burst_dms} DMs")
        s_rate, s_time, meter = burst(ours, deliveries, args.burst, daemon.process.pid)
        print(f"  serbero   {s_rate:8.0f} DM/s  ({s_time:.2f} s until every solver held every DM)")
        print(f"            {meter.report(burst_dms)}")
        b_rate, b_time, meter = burst(theirs, deliveries, args.burst, notifier.process.pid)
        print(f"  baseline  {b_rate:8.0f} DM/s  ({b_time:.2f} s)")
        print(f"            {meter.report(burst_dms)}")
        ratio = s_rate / b_rate
        throughput_ok = ratio >= TARGET_THROUGHPUT_RATIO
        print(
            f"  ratio     {ratio:8.2f} x     target >= {TARGET_THROUGHPUT_RATIO:g}x  "
            f"{verdict(throughput_ok)}"
        )
        print()

        print(
            f"sequential: {args.sequential} disputes, {GAP_MS} ms pause after each is complete "
            "(no delayed-ACK artefacts);"
        )
        sequential_dms = args.sequential * SOLVERS
        meter = CpuMeter(daemon.process.pid)
        s_samples = sequential(ours, deliveries, args.sequential)
        s_cpu = meter.report(sequential_dms)
        meter = CpuMeter(notifier.process.pid)
        b_samples = sequential(theirs, deliveries, args.sequential)
        b_cpu = meter.report(sequential_dms)
        s_detected = serbero_detections(daemon.log_path, s_samples)
        b_detected: dict[str, float] = json.loads(notifier.ask("detections"))
        latency_ok = True
        for span, s_detections, b_detections in (
            ("detect", s_detected, b_detected),
            ("publish", None, None),
        ):
            s_lat = latencies_ms(s_samples, s_detections)
            b_lat = latencies_ms(b_samples, b_detections)
            print(f"  latency = {span} -> DM at the last of {SOLVERS} solvers")
            for name, samples, cpu in (("serbero", s_lat, s_cpu), ("baseline", b_lat, b_cpu)):
                print(
                    f"  {name:<9} median {statistics.median(samples):6.1f} ms   "
                    f"p95 {p95(samples):6.1f} ms   "
                    f"(min {min(samples):.1f}, max {max(samples):.1f})"
                )
                if span == "publish":
                    print(f"            {cpu}")
            latency_ratio = statistics.median(s_lat) / statistics.median(b_lat)
            if span == "detect":
                latency_ok = latency_ratio <= TARGET_LATENCY_RATIO
                target = f"target <= {TARGET_LATENCY_RATIO:g}x  {verdict(latency_ok)}"
            else:
                target = "(for reference: includes the relay's delivery to the notifier)"
            print(f"  ratio     {latency_ratio:8.2f} x     {target}")
        print(f"  serbero exit status after SIGTERM: {daemon.stop()}")
        trouble = daemon.count_events(*TROUBLE_EVENTS)
        print("  serbero log: " + ", ".join(f"{name} x{n}" for name, n in trouble.items()))
        print()

        print(
            f"memory: a fresh daemon with 1 solver; {args.rss_disputes} disputes published "
            f"{RSS_PACE} a second, {PUBLISHERS} at a time over {RSS_CONNECTIONS} Mostro "
            "connections;"
        )
        print(f"  read once the solver holds all {args.rss_disputes} DMs")
        rss_daemon = self._daemon(
            "serbero-rss", daemon_config(serbero, mostro_c, url, [rss_solver])
        )
        memory = Target(self._mostro(mostro_c, url), serbero.public_hex, rss_indices)
        warm_up(memory, deliveries)
        idle_hwm, idle_rss = rss_daemon.memory_mb()
        dispute_ids = new_ids(args.rss_disputes)
        before = deliveries.counts()
        start = time.monotonic()
        publish_all(
            [memory.mostro, *(self._mostro(mostro_c, url) for _ in range(RSS_CONNECTIONS - 1))],
            dispute_ids,
            RSS_PACE,
        )
        published = time.monotonic() - start
        complete = deliveries.wait_arrivals(
            before, memory.solvers, len(dispute_ids), RSS_STALL_SECONDS
        )
        hwm, rss = rss_daemon.memory_mb()
        rss_ok = hwm <= TARGET_RSS_MB
        print(f"  after start-up      VmRSS {idle_rss:6.1f} MB  VmHWM {idle_hwm:6.1f} MB")
        print(
            f"  after the disputes  VmRSS {rss:6.1f} MB  VmHWM {hwm:6.1f} MB   "
            f"target <= {TARGET_RSS_MB:g} MB (VmHWM)  {verdict(rss_ok)}"
        )
        if complete:
            last = deliveries.wait_complete(
                before, memory.sender, dispute_ids, memory.solvers, RSS_TIMEOUT
            )
            print(
                f"  published in {published:.1f} s; the last DM arrived {last - start:.1f} s "
                "after the first dispute"
            )
        else:
            arrived = deliveries.counts()[memory.solvers[0]] - before.get(memory.solvers[0], 0)
            # The warm-up dispute counts in the daemon's log too.
            logged = rss_daemon.count_events("event_received", "notification_sent")
            print(
                f"  INCOMPLETE: {arrived} of {len(dispute_ids)} DMs arrived, none in the last "
                f"{RSS_STALL_SECONDS:g} s; the daemon received "
                f"{logged['event_received'] - 1} of {len(dispute_ids)} dispute events and "
                f"sent {logged['notification_sent'] - 1} DMs  {verdict(False)}"
            )
        trouble = rss_daemon.count_events(*TROUBLE_EVENTS)
        print(
            "  on the way: "
            + ", ".join(f"{name} x{count}" for name, count in trouble.items())
            + " (LocalRelay drops a connection after ~6,000 events it was sent: the"
            " daemon reconnects and retries what failed)"
        )
        print()

        self._clean_up()
        summary = json.loads(baseline_summary[-1]) if baseline_summary else {}
        if summary.get("failed") or summary.get("errors"):
            print(f"baseline notifier problems: {summary}")
        all_ok = throughput_ok and latency_ok and rss_ok and complete
        print(f"targets: {'all met' if all_ok else 'NOT all met'}")
        return 0


def _positive(text: str) -> int:
    """A count of disputes: every figure needs at least one."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=_positive, default=BURST)
    parser.add_argument("--sequential", type=_positive, default=SEQUENTIAL)
    parser.add_argument("--rss-disputes", type=_positive, default=RSS_DISPUTES)
    parser.add_argument(
        "--mediation",
        action="store_true",
        help="compare the daemon with mediation off and on instead (interleaved rounds)",
    )
    parser.add_argument("--rounds", type=_positive, default=MEDIATION_ROUNDS)
    parser.add_argument("--model-delay", type=float, default=MODEL_DELAY)
    parser.add_argument("--role", choices=("inbox", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "inbox":
        inbox_role(*args.role_args)
        return 0
    if args.role == "baseline":
        relay_url, secret, mostro, *solvers = args.role_args
        baseline_role(relay_url, secret, mostro, solvers)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="serbero-bench-"))
    try:
        status = Bench(args, workdir).run()
    except BaseException:
        print(f"the daemons' work directories are kept in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
