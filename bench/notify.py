"""Notification throughput, latency and memory: the serbero daemon next to a baseline notifier.

    .venv/bin/python bench/notify.py [--burst 300] [--sequential 20] [--rss-disputes 10000]

One run, one LocalRelay (rust-nostr, its own process), five solvers. The two notifiers are
(a) the real `serbero` daemon as a subprocess, exactly as an operator starts it, and (b)
`BaselineNotifier` (nostr-sdk) in its own process: the minimal reference behaviour, one NIP-17
DM per solver sent one after the other, each awaiting the relay's OK. Each notifier watches
its own simulated Mostro key, so they share the relay and the solvers but never each other's
disputes, and they are measured one after the other, never at the same time.

The five solver inboxes (nostr-sdk `SolverInbox`) live in a third process: an inbox in the
same process as a notifier competes with it for the interpreter and slows it down. They
report each DM they open with its `time.monotonic()` arrival time, a clock every process on
the machine shares. The simulated Mostro (`MostroSim`) publishes from this process.

Figures, printed next to their targets (issue #5):
- burst: N disputes published at once (32 concurrent publishers); DMs/s from the first
  publish until every solver holds a DM for every dispute. Target >= 3x the baseline.
- sequential: disputes one at a time; latency from handing the event to the relay until the
  last of the five solvers opened its DM (the notifier's detection is inside that span).
  After each dispute is complete we wait GAP_MS (>= 60 ms) before the next, so TCP
  delayed-ACK timers from the previous exchange never inflate the next sample. Median and
  p95 (nearest rank). Target: median <= 0.5x the baseline.
- memory: a fresh daemon with ONE solver is given 10,000 disputes (published as fast as the
  relay takes them, 32 at a time) and we wait until that solver holds all 10,000 DMs; then
  VmHWM (peak) and VmRSS from /proc/<pid>/status. Target <= 80 MB.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import re
import shutil
import signal
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

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support is not an installed package

from serbero.protocol.keys import Keys  # noqa: E402
from tests.support.baseline_notifier import BaselineNotifier  # noqa: E402
from tests.support.mostro_sim import MostroSim  # noqa: E402
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port  # noqa: E402
from tests.support.solver_inbox import ReceivedDm, SolverInbox  # noqa: E402

SOLVERS: Final = 5
BURST: Final = 300
SEQUENTIAL: Final = 20
RSS_DISPUTES: Final = 10_000
GAP_MS: Final = 100
PUBLISHERS: Final = 32

TARGET_THROUGHPUT_RATIO: Final = 3.0
TARGET_LATENCY_RATIO: Final = 0.5
TARGET_RSS_MB: Final = 80.0

READY_TIMEOUT: Final = 30.0
BURST_TIMEOUT: Final = 180.0
DISPUTE_TIMEOUT: Final = 15.0
RSS_TIMEOUT: Final = 600.0
STOP_TIMEOUT: Final = 10.0

DISPUTE_LINE: Final = re.compile(r"^dispute_id: (\S+)$", re.MULTILINE)


# --- child process roles -------------------------------------------------------------------


def inboxes_role(relay_url: str, secrets: Sequence[str]) -> None:
    """Open every solver's DMs and print `[solver, sender, dispute_id, monotonic]` per DM."""
    lock = threading.Lock()

    def report(index: int, dm: ReceivedDm) -> None:
        match = DISPUTE_LINE.search(dm.content)
        if match is None:
            return
        line = json.dumps([index, dm.sender_hex, match.group(1), dm.received_at])
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    inboxes = [
        SolverInbox(secret, [relay_url], on_message=functools.partial(report, index))
        for index, secret in enumerate(secrets)
    ]
    for inbox in inboxes:
        inbox.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes our stdin
    for inbox in inboxes:
        inbox.close()


def baseline_role(relay_url: str, secret: str, mostro: str, solvers: Sequence[str]) -> None:
    with BaselineNotifier(secret, mostro, solvers, [relay_url]) as notifier:
        print("ready", flush=True)
        sys.stdin.read()
        summary = {
            "sent": notifier.sent_count(),
            "failed": notifier.failed_count(),
            "errors": notifier.errors()[:3],
        }
    print(json.dumps(summary), flush=True)


# --- the bench's side of the child processes ---------------------------------------------


class Child:
    """This script in another role; it prints `ready`, then serves until stdin closes."""

    def __init__(self, role: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.process.kill()
            raise RuntimeError(f"{role} process did not start (said {line!r})")

    @property
    def stdout(self) -> IO[str]:
        assert self.process.stdout is not None
        return self.process.stdout

    def stop(self) -> str:
        """Close its stdin and return what it printed last."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        rest = self.process.stdout.read() if self.process.stdout else ""
        self.process.wait(STOP_TIMEOUT)
        return rest


class Deliveries:
    """What the inbox process reported: per (sender, dispute id), the first arrival time at
    each solver. One measurement waits at a time; the reader thread ticks its disputes off
    as they complete, so waiting for 10,000 disputes costs no rescans."""

    def __init__(self, inboxes: Child) -> None:
        self._cond = threading.Condition()
        self._arrivals: dict[tuple[str, str], dict[int, float]] = {}
        self._waiting: tuple[str, int, set[str]] | None = None
        self._thread = threading.Thread(target=self._read, args=(inboxes.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            solver, sender, dispute_id, at = json.loads(line)
            with self._cond:
                held = self._arrivals.setdefault((sender, dispute_id), {})
                held.setdefault(solver, at)
                if self._waiting is None:
                    continue
                want_sender, solvers, pending = self._waiting
                if sender == want_sender and len(held) >= solvers and dispute_id in pending:
                    pending.discard(dispute_id)
                    if not pending:
                        self._cond.notify_all()

    def wait_complete(
        self, sender: str, dispute_ids: Sequence[str], solvers: int, timeout: float
    ) -> float:
        """Block until every solver holds every dispute from `sender`; the last arrival."""
        with self._cond:
            pending = {d for d in dispute_ids if len(self._arrivals.get((sender, d), ())) < solvers}
            self._waiting = (sender, solvers, pending)
            try:
                if not self._cond.wait_for(lambda: not pending, timeout):
                    missing = len(pending)
                    raise TimeoutError(
                        f"{missing} of {len(dispute_ids)} disputes not at all {solvers} "
                        f"solvers within {timeout:.0f}s"
                    )
            finally:
                self._waiting = None
            return max(max(self._arrivals[(sender, d)].values()) for d in dispute_ids)


class Daemon:
    """The `serbero` daemon on its own config and database; its log goes to a file."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        workdir.mkdir()
        config = workdir / "config.toml"
        config.write_text(config_text)
        config.chmod(0o600)
        self.log_path = workdir / "serbero.log"
        self._log = self.log_path.open("w")
        script = Path(sys.executable).with_name("serbero")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERBERO_")}
        env["SERBERO_CONFIG"] = str(config)
        self.process = subprocess.Popen(
            [str(script) if script.exists() else "serbero"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def memory_mb(self) -> tuple[float, float]:
        """(VmHWM, VmRSS) in MB (1e6 bytes) from /proc/<pid>/status."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024 / 1e6
        return fields["VmHWM"], fields["VmRSS"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def daemon_config(serbero: Keys, mostro: Keys, relay: str, solvers: Sequence[Keys]) -> str:
    solver_tables = "".join(f'[[solvers]]\npubkey = "{s.public_hex}"\n\n' for s in solvers)
    return (
        f'[serbero]\nprivate_key = "{serbero.secret.hex()}"\ndb_path = "serbero.db"\n'
        f'log_level = "info"\n\n[mostro]\npubkey = "{mostro.public_hex}"\n\n'
        f'[[relays]]\nurl = "{relay}"\n\n{solver_tables}'
        # No reminders during the bench: every DM measured is an initial notification.
        "[timeouts]\nrenotification_seconds = 86400\n"
        "renotification_check_interval_seconds = 3600\n"
    )


# --- measurements -------------------------------------------------------------------------


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def publish_all(mostro: MostroSim, dispute_ids: Sequence[str]) -> None:
    """Open every dispute, PUBLISHERS at a time (MostroSim is thread-safe)."""
    with concurrent.futures.ThreadPoolExecutor(PUBLISHERS) as pool:
        for _ in pool.map(lambda d: mostro.open_dispute(d), dispute_ids):
            pass


def warm_up(mostro: MostroSim, deliveries: Deliveries, sender: str, solvers: int) -> None:
    """One dispute end to end: connections, subscriptions and caches are live."""
    [dispute_id] = new_ids(1)
    mostro.open_dispute(dispute_id)
    deliveries.wait_complete(sender, [dispute_id], solvers, READY_TIMEOUT)


def burst(
    mostro: MostroSim, deliveries: Deliveries, sender: str, count: int
) -> tuple[float, float]:
    """(DMs per second, seconds) for `count` disputes opened at once."""
    dispute_ids = new_ids(count)
    start = time.monotonic()
    publish_all(mostro, dispute_ids)
    last = deliveries.wait_complete(sender, dispute_ids, SOLVERS, BURST_TIMEOUT)
    elapsed = last - start
    return count * SOLVERS / elapsed, elapsed


def sequential(mostro: MostroSim, deliveries: Deliveries, sender: str, count: int) -> list[float]:
    """Milliseconds from publishing each dispute to its DM at the last solver."""
    latencies = []
    for dispute_id in new_ids(count):
        start = time.monotonic()
        mostro.open_dispute(dispute_id)
        last = deliveries.wait_complete(sender, [dispute_id], SOLVERS, DISPUTE_TIMEOUT)
        latencies.append((last - start) * 1000)
        time.sleep(GAP_MS / 1000)
    return latencies


def p95(samples: Sequence[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def verdict(ok: bool) -> str:
    return "OK" if ok else "MISS"


# --- the run -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.cleanups: list[Callable[[], object]] = []

    def run(self) -> int:
        try:
            return self._run()
        finally:
            for cleanup in reversed(self.cleanups):
                cleanup()

    def _run(self) -> int:
        args = self.args
        relay = LocalRelayProcess(free_loopback_port())
        relay.start()
        self.cleanups.append(relay.stop)
        url = relay.url

        solvers = [Keys.generate() for _ in range(SOLVERS)]
        rss_solver = Keys.generate()
        serbero, baseline = Keys.generate(), Keys.generate()
        mostro_a, mostro_b, mostro_c = Keys.generate(), Keys.generate(), Keys.generate()

        inboxes = Child("inboxes", url, *(k.secret.hex() for k in (*solvers, rss_solver)))
        self.cleanups.append(inboxes.stop)
        deliveries = Deliveries(inboxes)

        daemon = Daemon(self.workdir / "serbero", daemon_config(serbero, mostro_a, url, solvers))
        self.cleanups.append(daemon.stop)
        notifier = Child(
            "baseline",
            url,
            baseline.secret.hex(),
            mostro_b.public_hex,
            *(k.public_hex for k in solvers),
        )
        baseline_summary: list[str] = []
        self.cleanups.append(lambda: baseline_summary.append(notifier.stop()))

        sim_a = MostroSim(mostro_a.secret.hex(), [url]).start()
        self.cleanups.append(sim_a.close)
        sim_b = MostroSim(mostro_b.secret.hex(), [url]).start()
        self.cleanups.append(sim_b.close)

        warm_up(sim_a, deliveries, serbero.public_hex, SOLVERS)
        warm_up(sim_b, deliveries, baseline.public_hex, SOLVERS)

        print(
            f"bench/notify.py: serbero daemon vs baseline notifier (nostr-sdk, sequential DMs); "
            f"one LocalRelay, {SOLVERS} solvers, {os.cpu_count()} CPUs"
        )
        print("  processes: relay | solver inboxes | serbero | baseline | this one (MostroSim)")
        print()

        print(f"burst: {args.burst} disputes at once -> {args.burst * SOLVERS} DMs")
        s_rate, s_time = burst(sim_a, deliveries, serbero.public_hex, args.burst)
        print(f"  serbero   {s_rate:8.0f} DM/s  ({s_time:.2f} s until every solver held every DM)")
        b_rate, b_time = burst(sim_b, deliveries, baseline.public_hex, args.burst)
        print(f"  baseline  {b_rate:8.0f} DM/s  ({b_time:.2f} s)")
        ratio = s_rate / b_rate
        throughput_ok = ratio >= TARGET_THROUGHPUT_RATIO
        print(
            f"  ratio     {ratio:8.2f} x     target >= {TARGET_THROUGHPUT_RATIO:g}x  "
            f"{verdict(throughput_ok)}"
        )
        print()

        print(
            f"sequential: {args.sequential} disputes, {GAP_MS} ms pause after each is complete; "
            f"latency = publish -> DM opened by the last of {SOLVERS} solvers"
        )
        s_lat = sequential(sim_a, deliveries, serbero.public_hex, args.sequential)
        b_lat = sequential(sim_b, deliveries, baseline.public_hex, args.sequential)
        for name, samples in (("serbero", s_lat), ("baseline", b_lat)):
            print(
                f"  {name:<9} median {statistics.median(samples):6.1f} ms   "
                f"p95 {p95(samples):6.1f} ms   (min {min(samples):.1f}, max {max(samples):.1f})"
            )
        latency_ratio = statistics.median(s_lat) / statistics.median(b_lat)
        latency_ok = latency_ratio <= TARGET_LATENCY_RATIO
        print(
            f"  ratio     {latency_ratio:8.2f} x     target <= {TARGET_LATENCY_RATIO:g}x  "
            f"{verdict(latency_ok)}"
        )
        print()

        daemon_status = daemon.stop()
        print(f"serbero exit status after SIGTERM: {daemon_status}")

        print(
            f"memory: a fresh daemon, 1 solver, {args.rss_disputes} disputes published "
            f"{PUBLISHERS} at a time; read once the solver holds all {args.rss_disputes} DMs"
        )
        rss_daemon = Daemon(
            self.workdir / "serbero-rss", daemon_config(serbero, mostro_c, url, [rss_solver])
        )
        self.cleanups.append(rss_daemon.stop)
        sim_c = MostroSim(mostro_c.secret.hex(), [url]).start()
        self.cleanups.append(sim_c.close)
        warm_up(sim_c, deliveries, serbero.public_hex, 1)
        idle_hwm, idle_rss = rss_daemon.memory_mb()
        start = time.monotonic()
        dispute_ids = new_ids(args.rss_disputes)
        publish_all(sim_c, dispute_ids)
        published = time.monotonic() - start
        deliveries.wait_complete(serbero.public_hex, dispute_ids, 1, RSS_TIMEOUT)
        done = time.monotonic() - start
        hwm, rss = rss_daemon.memory_mb()
        rss_ok = hwm <= TARGET_RSS_MB
        print(f"  after start-up      VmRSS {idle_rss:6.1f} MB  VmHWM {idle_hwm:6.1f} MB")
        print(
            f"  after the disputes  VmRSS {rss:6.1f} MB  VmHWM {hwm:6.1f} MB   "
            f"target <= {TARGET_RSS_MB:g} MB  {verdict(rss_ok)}"
        )
        print(f"  published in {published:.1f} s, every DM delivered after {done:.1f} s")
        print()

        for cleanup in reversed(self.cleanups):
            cleanup()
        self.cleanups.clear()
        summary = json.loads(baseline_summary[-1]) if baseline_summary else {}
        if summary.get("failed") or summary.get("errors"):
            print(f"baseline notifier problems: {summary}")
        all_ok = throughput_ok and latency_ok and rss_ok
        print(f"targets: {'all met' if all_ok else 'NOT all met'}")
        return 0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=BURST)
    parser.add_argument("--sequential", type=int, default=SEQUENTIAL)
    parser.add_argument("--rss-disputes", type=int, default=RSS_DISPUTES)
    parser.add_argument("--role", choices=("inboxes", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if args.role == "inboxes":
        inboxes_role(args.role_args[0], args.role_args[1:])
        return 0
    if args.role == "baseline":
        relay_url, secret, mostro, *solvers = args.role_args
        baseline_role(relay_url, secret, mostro, solvers)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="serbero-bench-"))
    try:
        return Bench(args, workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
