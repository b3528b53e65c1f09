"""Serbero demo: a local relay, the real daemon with mediation on, a simulated Mostro, a
scripted reasoning model, the parties of each dispute and three solvers.

    python3 dev.py demo                           # what the README's Quick start runs
    .venv/bin/python -m demo.run --duration 30    # stop on its own after 30 s

Everything runs on this machine. rust-nostr's LocalRelay serves a free loopback port; the
`serbero` daemon runs as a subprocess on a throw-away config and database, exactly as an
operator would start it (SERBERO_CONFIG, no flags), with mediation and the escalation
dispatcher on; its reasoning provider is a scripted model API on loopback HTTP. A simulated
Mostro opens a dispute every few seconds (`demo.scenario`): Serbero mediates one to a summary
for the solvers, escalates the next on conflicting claims to the write solver, and finds the
third already taken by a solver. The parties answer Serbero on the dispute chat, and three
solver inboxes decrypt every NIP-17 DM Serbero sends: each prints what it sees as it happens.

Ctrl-C (or `--duration`) stops it all: the daemon gets SIGTERM, the peers disconnect, the
relay and the model stop and the temporary directory is removed.

The relay, Mostro, the parties, the inboxes and the model's HTTP server are the independent
peers from tests/support (the daemon never imports nostr-sdk); they are reused here, not
copied. What the model answers is the demo's own script (`demo.mediation`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any, Final

from demo.console import Console
from demo.mediation import ScriptedModel
from demo.scenario import OPEN_EVERY, Scenario, Solver
from serbero.protocol.keys import Keys
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port
from tests.support.scripted_llm import scripted_llm_thread
from tests.support.solver_inbox import ReceivedDm, SolverInbox

# How often the daemon reads the dispute chat and scans for handoffs, in seconds: short, so
# the stories move at a watchable pace.
CHAT_FETCH_SECONDS: Final = 2
DISPATCH_SECONDS: Final = 2
# The scripted model's credential: the daemon reads it from this variable (never the file).
MODEL_KEY_ENV: Final = "SERBERO_DEMO_MODEL_KEY"
MODEL_KEY: Final = "demo-key-for-the-scripted-model"

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
        "prompt_file_packaged",
        "take_requested",
        "chat_message_sent",
    }
)
READY_EVENT: Final = "event_loop_started"
# Mediation came up (the engine runs), or could not: the demo goes on either way.
MEDIATION_EVENTS: Final = frozenset({"mediation_engine_started", "mediation_bringup_failed"})
LEVELS_SHOWN: Final = frozenset({"info", "warn", "error"})
# DM bodies remembered to print a repeat to another solver as one line.
SAME_DM_MEMORY: Final = 256


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
    path: Path,
    serbero: Identity,
    mostro: Identity,
    solvers: list[tuple[Identity, str]],
    relay: str,
    model_url: str,
) -> None:
    """A complete config.toml the way an operator writes one (secret key included, 0600),
    with mediation against the scripted model and the escalation dispatcher on."""
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
[notifications]
resolution = true

[mediation]
enabled = true

[reasoning]
enabled = true
provider = "openai-compatible"
model = "scripted-demo-model"
api_base = "{model_url}"
api_key_env = "{MODEL_KEY_ENV}"
request_timeout_seconds = 10

[chat]
inbound_fetch_interval_seconds = {CHAT_FETCH_SECONDS}

[escalation]
enabled = true
dispatch_interval_seconds = {DISPATCH_SECONDS}
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
        self._seen: set[str] = set()
        self._seen_changed = threading.Condition()
        env = dict(os.environ, SERBERO_CONFIG=str(config), **{MODEL_KEY_ENV: MODEL_KEY})
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

    def wait_for(self, events: Collection[str], timeout: float) -> str:
        """Block until the daemon logged one of `events` and return it; SystemExit if it
        died or did not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._seen_changed:
            while not (seen := self._seen.intersection(events)):
                if self._process.poll() is not None:
                    raise SystemExit(f"demo: serbero exited with status {self._process.returncode}")
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"demo: serbero logged none of {sorted(events)} within {timeout:.0f}s"
                    )
                self._seen_changed.wait(0.1)
        return min(seen)

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
        if event in (READY_EVENT, *MEDIATION_EVENTS):
            with self._seen_changed:
                self._seen.add(event)
                self._seen_changed.notify_all()
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


class DmPrinter:
    """Prints each solver's DMs, numbered; a DM another solver already received in full
    prints as one line with its number, so a notice to every solver reads once
    (thread-safe: the inboxes call it from their own threads)."""

    def __init__(self, console: Console, serbero: Identity) -> None:
        self._console = console
        self._serbero = serbero
        self._lock = threading.Lock()
        self._numbers: dict[tuple[str, str], tuple[int, str]] = {}
        self._count = 0

    def __call__(self, solver: Identity, dm: ReceivedDm) -> None:
        sender = "serbero" if dm.sender_hex == self._serbero.pubkey else dm.sender_hex
        with self._lock:
            if len(self._numbers) >= SAME_DM_MEMORY:
                self._numbers.clear()
            seen = self._numbers.get((sender, dm.content))
            if seen is None:
                self._count += 1
                seen = self._numbers[(sender, dm.content)] = (self._count, solver.label)
        number, first = seen
        if first == solver.label:
            self._console.line(solver.label, f"<- DM #{number} from {sender}", dm.content)
        else:
            self._console.line(solver.label, f"<- DM #{number} from {sender} (as {first})")


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

        model = ScriptedModel(console)
        llm = stack.enter_context(scripted_llm_thread(model))

        serbero, mostro_id = Identity("serbero"), Identity("mostro")
        solvers = [(Identity(label), permission) for label, permission in SOLVERS]
        for who in (serbero, mostro_id, *(s for s, _ in solvers)):
            console.name(who.pubkey, who.label)
        config = workdir / "config.toml"
        write_config(config, serbero, mostro_id, solvers, relay.url, llm.url)

        console.plain("Serbero demo: Ctrl-C stops everything")
        console.plain(f"  relay     {relay.url}  (rust-nostr LocalRelay)")
        console.plain(f"  workdir   {workdir}  (config.toml, serbero.db; removed at the end)")
        console.plain(f"  serbero   {serbero.pubkey}")
        console.plain(f"  mostro    {mostro_id.pubkey}")
        console.plain(f"  model     {llm.url}  (scripted reasoning API, demo/mediation.py)")
        for who, permission in solvers:
            console.plain(f"  {who.label:<9} {who.pubkey}  ({permission})")
        console.plain(
            f"  a new dispute every {OPEN_EVERY:.0f}s, in turn: mediated to a summary,"
            " escalated on conflicting claims, taken by a solver first"
        )
        if args.log_file is not None:
            console.plain(f"  daemon log  {args.log_file.resolve()}")
        console.plain()

        print_dm = DmPrinter(console, serbero)
        for who, _ in solvers:
            inbox = SolverInbox(
                who.secret_hex,
                [relay.url],
                on_message=functools.partial(print_dm, who),
            )
            inbox.start()
            _cleanup(stack, console, f"{who.label}'s inbox", inbox.close)

        log_copy = None
        if args.log_file is not None:
            log_copy = stack.enter_context(args.log_file.open("a", encoding="utf-8"))
        daemon = Daemon(workdir, config, console, verbose=args.verbose, log_copy=log_copy)
        _cleanup(stack, console, "serbero", lambda: _stop_daemon(daemon, console))
        daemon.wait_for({READY_EVENT}, READY_TIMEOUT)
        if daemon.wait_for(MEDIATION_EVENTS, READY_TIMEOUT) != "mediation_engine_started":
            console.line("demo", "mediation did not come up: the disputes go to the solvers only")

        mostro = MostroSim(
            mostro_id.secret_hex, [relay.url], instance_name=INSTANCE_NAME, answer_takes=True
        )
        mostro.start()
        _cleanup(stack, console, "the Mostro simulator", mostro.close)

        scenario = Scenario(
            mostro=mostro,
            model=model,
            console=console,
            solvers=[Solver(who.label, who.pubkey, permission) for who, permission in solvers],
            serbero_pubkey=serbero.pubkey,
            relay_url=relay.url,
        )
        _cleanup(stack, console, "the parties", scenario.close)
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
