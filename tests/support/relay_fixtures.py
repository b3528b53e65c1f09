"""pytest fixtures that run real relays: rust-nostr's `LocalRelay` in a subprocess.

Enable them with `pytest_plugins = ["tests.support.relay_fixtures"]` in `tests/conftest.py`.

    def test_something(local_relay):               # a plain relay, already running
        url = local_relay.url                      # "ws://127.0.0.1:<port>"

    def test_other(local_relay_factory):
        limited = local_relay_factory(rate_limit=60)   # 60 events/min per connection
        guarded = local_relay_factory(nip42="both")    # NIP-42 for reads and writes
        limited.stop()                                 # the port goes quiet ...
        limited.start()                                # ... and serves again, same URL

Each relay keeps its events in memory: a restart comes back empty. `stop()`/`start()` block
for a fraction of a second; from a Trio test prefer `await relay.astop()` / `await
relay.astart()`, which run them in a worker thread so the loop keeps serving.
"""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest
import trio

LOCAL_RELAY_SCRIPT: Final = Path(__file__).with_name("local_relay.py")
LOOPBACK: Final = "127.0.0.1"
READY_TIMEOUT: Final = 15.0
STOP_TIMEOUT: Final = 5.0


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class LocalRelayProcess:
    """One `LocalRelay` subprocess pinned to a loopback port, restartable on that port."""

    def __init__(self, port: int, *, rate_limit: int | None = None, nip42: str | None = None):
        self.port = port
        self.rate_limit = rate_limit
        self.nip42 = nip42
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        command = [sys.executable, str(LOCAL_RELAY_SCRIPT), "--port", str(self.port)]
        if self.rate_limit is not None:
            command += ["--rate-limit", str(self.rate_limit)]
        if self.nip42 is not None:
            command += ["--nip42", self.nip42]
        return command

    def start(self) -> None:
        """Start the relay and return once it accepts connections."""
        if self.running:
            raise RuntimeError(f"relay on port {self.port} is already running")
        process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._process = process
        try:
            line = self._read_ready_line(process)
        except BaseException:
            self.stop()
            raise
        if line != self.url:
            self.stop()
            raise RuntimeError(f"local relay announced {line!r}, expected {self.url!r}")

    def _read_ready_line(self, process: subprocess.Popen[bytes]) -> str:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(READY_TIMEOUT):
                raise RuntimeError(f"local relay on port {self.port} not ready in {READY_TIMEOUT}s")
        line = process.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"local relay on port {self.port} exited: {process.wait()}")
        return line

    def stop(self) -> None:
        """Stop the relay (SIGTERM, then SIGKILL if it lingers); idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    async def astart(self) -> None:
        await trio.to_thread.run_sync(self.start)

    async def astop(self) -> None:
        await trio.to_thread.run_sync(self.stop)


LocalRelayFactory = Callable[..., LocalRelayProcess]


@pytest.fixture
def local_relay_factory() -> Iterator[LocalRelayFactory]:
    """Start relays on demand: `factory(rate_limit=None, nip42=None, port=None)`; all stop
    at teardown. `nip42` is "read", "write" or "both"."""
    relays: list[LocalRelayProcess] = []

    def start(
        *, rate_limit: int | None = None, nip42: str | None = None, port: int | None = None
    ) -> LocalRelayProcess:
        relay = LocalRelayProcess(
            free_loopback_port() if port is None else port, rate_limit=rate_limit, nip42=nip42
        )
        relays.append(relay)
        relay.start()
        return relay

    yield start
    for relay in relays:
        relay.stop()


@pytest.fixture
def local_relay(local_relay_factory: LocalRelayFactory) -> LocalRelayProcess:
    """A running relay with default settings."""
    return local_relay_factory()
