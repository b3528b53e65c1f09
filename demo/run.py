"""Serbero demo: a local relay, the real daemon, a simulated Mostro and three solvers.

    python3 dev.py demo                           # what the README's Quick start runs
    .venv/bin/python -m demo.run --duration 30    # stop on its own after 30 s

Everything runs on this machine. rust-nostr's LocalRelay serves a free loopback port; the
`serbero` daemon runs as a subprocess on a throw-away config and database, exactly as an
operator would start it (SERBERO_CONFIG, no flags); a simulated Mostro opens a dispute every
few seconds and later takes and settles or releases it; three solver inboxes decrypt every
NIP-17 DM Serbero sends and print it. One dispute in three is never taken, so the daemon's
re-notifications show up after `RENOTIFY_SECONDS`.

Ctrl-C (or `--duration`) stops it all: the daemon gets SIGTERM, the peers disconnect, the
relay stops and the temporary directory is removed.

The relay, Mostro and the inboxes are the independent nostr-sdk peers from tests/support (the
daemon never imports nostr-sdk); they are reused here, not copied.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, TextIO

from serbero.printable import printable
from serbero.protocol.keys import Keys
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port
from tests.support.sdk_thread import PublishError
from tests.support.solver_inbox import ReceivedDm, SolverInbox

# Scenario timing, in seconds. A dispute opens every OPEN_EVERY; of every three, one is taken
# and settled, one is taken and refunded to the seller, and one waits unattended (so Serbero
# re-notifies it after RENOTIFY_SECONDS) until the parties release it themselves.
OPEN_EVERY: Final = 6.0
TAKE_AFTER: Final = 2.0
CLOSE_AFTER_TAKEN: Final = 2.0
RELEASE_UNATTENDED_AFTER: Final = 32.0
RENOTIFY_SECONDS: Final = 20
RENOTIFY_CHECK_SECONDS: Final = 4

READY_TIMEOUT: Final = 30.0
DAEMON_STOP_TIMEOUT: Final = 5.0
SOLVERS: Final = (("alice", "write"), ("bob", "read"), ("carol", "read"))
INSTANCE_NAME: Final = "Demo Mostro"

# Daemon records that only repeat what the demo already shows, or that every start prints.
QUIET_EVENTS: Final = frozenset(
    {
        "config_loaded",
        "configured_relay",
        "configured_solver",
        "database_ready",
        "cold_start_since_now",
        "resume_since",
        "solvers_ready",
        "subscribing",
        "subscription_sent",
        "phase4_dispatcher_disabled",
        "event_received",
        "routed",
        "renotification_tick",
    }
)
READY_EVENT: Final = "event_loop_started"
LEVELS_SHOWN: Final = frozenset({"info", "warn", "error"})
# One printed line (a log record, a DM row) is clipped past this many characters.
LINE_SHOWN: Final = 400
_HEX64: Final = re.compile(r"\b[0-9a-f]{64}\b")
_UUID: Final = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


class Console:
    """Thread-safe printing with the seconds since the demo started; peers print from their
    own threads."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._names: dict[str, str] = {}

    def name(self, pubkey_hex: str, label: str) -> None:
        """Show `label` instead of `pubkey_hex` in one-line records."""
        self._names[pubkey_hex] = label

    def shorten(self, text: str) -> str:
        """Known keys by name, other keys and dispute UUIDs cut to their first 8 characters."""
        text = _HEX64.sub(lambda m: self._names.get(m.group(0), m.group(0)[:8] + "…"), text)
        return _UUID.sub(lambda m: m.group(1) + "…", text)

    def line(self, who: str, text: str, body: str | None = None) -> None:
        """One record; `text` and `body` came from relays and the daemon: shown escaped."""
        stamp = f"[{time.monotonic() - self._start:6.1f}s]"
        lines = [f"{stamp} {who:<8} {printable(text, LINE_SHOWN)}"]
        if body is not None:
            lines += [f"{'':<19}| {printable(row, LINE_SHOWN)}" for row in body.split("\n")]
        with self._lock:
            print("\n".join(lines), file=self._stream, flush=True)

    def plain(self, text: str = "") -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)


class Identity:
    """A demo participant's fresh key pair."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.keys = Keys.generate()

    @property
    def secret_hex(self) -> str:
        return self.keys.secret.hex()

    @property
    def pubkey(self) -> str:
        return self.keys.public_hex


def write_config(
    path: Path, serbero: Identity, mostro: Identity, solvers: list[tuple[Identity, str]], relay: str
) -> None:
    """A complete config.toml the way an operator writes one (secret key included, 0600)."""
    solver_tables = "".join(
        f'\n[[solvers]]\npubkey = "{who.pubkey}"  # {who.label}\npermission = "{permission}"\n'
        for who, permission in solvers
    )
    path.write_text(
        f"""# Written by demo/run.py; removed when the demo stops.
[serbero]
private_key = "{serbero.secret_hex}"
db_path = "serbero.db"
log_level = "info"

[mostro]
pubkey = "{mostro.pubkey}"

[[relays]]
url = "{relay}"
{solver_tables}
[timeouts]
renotification_seconds = {RENOTIFY_SECONDS}
renotification_check_interval_seconds = {RENOTIFY_CHECK_SECONDS}

[notifications]
resolution = true
""",
        encoding="utf-8",
    )
    path.chmod(0o600)


def serbero_command() -> list[str]:
    """The `serbero` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("serbero")
    if script.exists():
        return [str(script)]
    found = shutil.which("serbero")
    if found is None:
        raise SystemExit("demo: the `serbero` command is not installed (run `python3 dev.py demo`)")
    return [found]


class Daemon:
    """The real daemon in its own session, so a terminal Ctrl-C reaches the demo only and the
    demo stops it in order with SIGTERM. Its JSON log lines are shown compactly."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        console: Console,
        *,
        verbose: bool,
        log_copy: IO[str] | None,
    ) -> None:
        self._console = console
        self._verbose = verbose
        self._log_copy = log_copy
        self.ready = threading.Event()
        env = dict(os.environ, SERBERO_CONFIG=str(config))
        for inherited in ("SERBERO_PRIVATE_KEY", "SERBERO_DB_PATH", "SERBERO_LOG"):
            env.pop(inherited, None)
        self._process = subprocess.Popen(
            serbero_command(),
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, name="daemon-log", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def exited(self) -> int | None:
        return self._process.poll()

    def wait_ready(self, timeout: float) -> None:
        """Block until the daemon logged `event_loop_started`; SystemExit if it died or hung."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self._process.poll() is not None:
                self._reader.join(1.0)
                raise SystemExit(f"demo: serbero exited with status {self._process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: serbero did not start within {timeout:.0f}s")

    def stop(self) -> int:
        """SIGTERM, wait for the clean exit the daemon promises (SIGKILL if it lingers)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(DAEMON_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._console.line("demo", "serbero did not stop on SIGTERM; killing it")
                self._process.kill()
                self._process.wait()
        self._reader.join(DAEMON_STOP_TIMEOUT)
        return self._process.returncode

    def _read_log(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.rstrip("\n")
            if self._log_copy is not None:
                self._log_copy.write(raw)
                self._log_copy.flush()
            self._show(line)

    def _show(self, line: str) -> None:
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            if line.strip():
                self._console.line("serbero", line)
            return
        if not isinstance(record, dict):
            self._console.line("serbero", line)
            return
        event = str(record.pop("event", "?"))
        level = str(record.pop("level", "info"))
        for noise in ("timestamp", "target"):
            record.pop(noise, None)
        if event == READY_EVENT:
            self.ready.set()
        if not self._verbose and (level not in LEVELS_SHOWN or event in QUIET_EVENTS):
            return
        fields = " ".join(f"{key}={_compact(value)}" for key, value in record.items())
        marker = "" if level == "info" else f"{level.upper()} "
        self._console.line("serbero", self._console.shorten(f"{marker}{event} {fields}".rstrip()))


def _compact(value: Any) -> str:
    """A log field's value, quoted when it holds a space (`Console.line` escapes it)."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return value if value and not any(ch.isspace() for ch in value) else f'"{value}"'


Action = Callable[[], None]


class Scenario:
    """Mostro's side of the story on a timeline: each dispute opens, and later is taken and
    closed, or left alone until the parties release it."""

    def __init__(self, mostro: MostroSim, console: Console, solvers: list[Identity]) -> None:
        self._mostro = mostro
        self._console = console
        self._solvers = solvers
        self._queue: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._disputes = itertools.count(1)

    def start(self) -> None:
        self._at(time.monotonic(), self._open_next)

    def run_until(self, stop: threading.Event, deadline: float | None) -> None:
        """Perform due actions until `stop` is set or `deadline` (monotonic) passes."""
        while self._queue:
            due = self._queue[0][0]
            wake = due if deadline is None else min(due, deadline)
            if stop.wait(max(0.0, wake - time.monotonic())):
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            _, _, action = heapq.heappop(self._queue)
            action()

    def _at(self, when: float, action: Action) -> None:
        heapq.heappush(self._queue, (when, next(self._order), action))

    def _open_next(self) -> None:
        number = next(self._disputes)
        now = time.monotonic()
        self._at(now + OPEN_EVERY, self._open_next)
        dispute_id = str(uuid.uuid4())
        initiator = "buyer" if number % 2 else "seller"
        if not self._publish(
            f"opens dispute {dispute_id} (initiator: {initiator})",
            lambda: self._mostro.open_dispute(dispute_id, initiator=initiator),
        ):
            return
        story = number % 3
        if story == 0:
            self._at(now + RELEASE_UNATTENDED_AFTER, lambda: self._close(dispute_id, "released"))
            return
        solver = self._solvers[(number - 1) % len(self._solvers)]
        outcome = "settled" if story == 1 else "seller-refunded"
        self._at(now + TAKE_AFTER, lambda: self._take(dispute_id, solver))
        self._at(now + TAKE_AFTER + CLOSE_AFTER_TAKEN, lambda: self._close(dispute_id, outcome))

    def _take(self, dispute_id: str, solver: Identity) -> None:
        self._publish(
            f"{solver.label} takes dispute {dispute_id}",
            lambda: self._mostro.take_dispute(dispute_id, solver_pubkey=solver.pubkey),
        )

    def _close(self, dispute_id: str, status: str) -> None:
        self._publish(
            f"closes dispute {dispute_id}: {status}",
            lambda: self._mostro.resolve(dispute_id, status=status),
        )

    def _publish(self, what: str, publish: Callable[[], str]) -> bool:
        self._console.line("mostro", self._console.shorten(what))
        try:
            publish()
        except (PublishError, TimeoutError, RuntimeError) as exc:
            self._console.line("mostro", f"publish failed: {exc}")
            return False
        return True


def print_dm(console: Console, solver: Identity, serbero: Identity, dm: ReceivedDm) -> None:
    sender = "serbero" if dm.sender_hex == serbero.pubkey else dm.sender_hex
    console.line(solver.label, f"<- DM from {sender}", dm.content)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after the scenario ran this long (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show every daemon log record, debug included"
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="also append the daemon's raw JSON log lines to PATH (kept after the demo)",
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM only set `stop`: the scenario loop notices and the cleanup runs in order
    (no KeyboardInterrupt in the middle of a publish)."""

    def handler(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _deaf_to_ctrl_c(start: Action) -> None:
    """Start a child process with SIGINT blocked in the signal mask it inherits.

    A terminal's Ctrl-C goes to the whole foreground process group; the relay would stop at
    once and the daemon would log an outage while it is being stopped. Blocked, the relay
    leaves that to the demo, which stops it last (SIGTERM, or its stdin closing).
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _cleanup(stack: contextlib.ExitStack, console: Console, what: str, step: Action) -> None:
    """Register a cleanup step that reports its failure instead of skipping the later ones."""

    def guarded() -> None:
        try:
            step()
        except Exception as exc:
            console.line("demo", f"while stopping {what}: {exc!r}")

    stack.callback(guarded)


def run(args: argparse.Namespace, console: Console) -> int:
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stop_on_signals(stop))
        workdir = Path(tempfile.mkdtemp(prefix="serbero-demo-"))
        _cleanup(stack, console, "the temporary directory", lambda: _remove(workdir, console))

        relay = LocalRelayProcess(free_loopback_port())
        _deaf_to_ctrl_c(relay.start)
        _cleanup(stack, console, "the relay", relay.stop)

        serbero, mostro_id = Identity("serbero"), Identity("mostro")
        solvers = [(Identity(label), permission) for label, permission in SOLVERS]
        for who in (serbero, mostro_id, *(s for s, _ in solvers)):
            console.name(who.pubkey, who.label)
        config = workdir / "config.toml"
        write_config(config, serbero, mostro_id, solvers, relay.url)

        console.plain("Serbero demo: Ctrl-C stops everything")
        console.plain(f"  relay     {relay.url}  (rust-nostr LocalRelay)")
        console.plain(f"  workdir   {workdir}  (config.toml, serbero.db; removed at the end)")
        console.plain(f"  serbero   {serbero.pubkey}")
        console.plain(f"  mostro    {mostro_id.pubkey}")
        for who, permission in solvers:
            console.plain(f"  {who.label:<9} {who.pubkey}  ({permission})")
        console.plain(
            f"  a new dispute every {OPEN_EVERY:.0f}s; unattended ones are re-notified after "
            f"{RENOTIFY_SECONDS}s"
        )
        if args.log_file is not None:
            console.plain(f"  daemon log  {args.log_file.resolve()}")
        console.plain()

        for who, _ in solvers:
            inbox = SolverInbox(
                who.secret_hex,
                [relay.url],
                on_message=functools.partial(print_dm, console, who, serbero),
            )
            inbox.start()
            _cleanup(stack, console, f"{who.label}'s inbox", inbox.close)

        log_copy = None
        if args.log_file is not None:
            log_copy = stack.enter_context(args.log_file.open("a", encoding="utf-8"))
        daemon = Daemon(workdir, config, console, verbose=args.verbose, log_copy=log_copy)
        _cleanup(stack, console, "serbero", lambda: _stop_daemon(daemon, console))
        daemon.wait_ready(READY_TIMEOUT)

        mostro = MostroSim(mostro_id.secret_hex, [relay.url], instance_name=INSTANCE_NAME)
        mostro.start()
        _cleanup(stack, console, "the Mostro simulator", mostro.close)

        scenario = Scenario(mostro, console, [who for who, _ in solvers])
        scenario.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        scenario.run_until(stop, deadline)
        status = daemon.exited()
        if status is not None:
            console.line("demo", f"serbero exited early with status {status}")
            return 1
        console.line("demo", "stopping")
        return 0


def _stop_daemon(daemon: Daemon, console: Console) -> None:
    status = daemon.stop()
    console.line("demo", f"serbero (pid {daemon.pid}) exited with status {status}")


def _remove(workdir: Path, console: Console) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    console.line("demo", f"removed {workdir}")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    return run(args, Console(sys.stdout))


if __name__ == "__main__":
    sys.exit(main())
