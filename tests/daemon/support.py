"""Shared helpers for the daemon tests."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import apsw
import trio

from serbero.actors.relay import RelayTiming
from serbero.config import (
    Config,
    MostroConfig,
    NotificationsConfig,
    Permission,
    RelayConfig,
    Secret,
    SerberoConfig,
    SolverConfig,
    TimeoutsConfig,
)
from serbero.daemon import DaemonContext, serve
from serbero.protocol.keys import Keys
from tests.relay.raw_relay import RawConnection, RawRelay, open_raw_relay
from tests.support.mostro_sim import MostroSim
from tests.support.sdk_thread import ThreadedSdkPeer
from tests.support.solver_inbox import ReceivedDm, SolverInbox

R = TypeVar("R")

# Real-time relay timing for loopback tests: reconnect in a blink. The rate-limit pause
# stays above one second because LocalRelay refills its tokens in whole seconds.
FAST = RelayTiming(
    backoff_first=0.05,
    backoff_cap=0.3,
    probe_interval=0.05,
    rate_limit_retry_delays=(1.3,),
    rate_limit_budget=8.0,
)
REJECTION = "blocked: not today"


async def _reject_everything(conn: RawConnection) -> None:
    """A relay that answers every REQ with EOSE and every EVENT with `OK false`."""
    while True:
        frame = await conn.receive_json()
        if frame[0] == "REQ":
            await conn.send_json(["EOSE", frame[1]])
        elif frame[0] == "EVENT":
            await conn.send_json(["OK", frame[1]["id"], False, REJECTION])


@asynccontextmanager
async def open_rejecting_relay() -> AsyncIterator[RawRelay]:
    """BEY-1 harness: a loopback relay that stores nothing and refuses every publish."""
    async with open_raw_relay(_reject_everything) as relay:
        yield relay


# --- the daemon, in-process (CORE-12) -----------------------------------------------------

# CORE-10 / AS-1: every shutdown is clean within this many seconds.
SHUTDOWN_BUDGET = 2.0
# CORE-7 / AS-1: solvers get the initial DM within 30 s; on loopback it takes milliseconds.
DM_TIMEOUT = 30.0


def make_config(
    db_path: str,
    relay_urls: Sequence[str],
    *,
    serbero: Keys,
    mostro: Keys,
    solvers: Sequence[SolverConfig] = (),
    renotification_seconds: int = 3600,
    renotification_check_interval_seconds: int = 3600,
    resolution_notices: bool = True,
) -> Config:
    """A daemon config as the loader would produce it (timer settings 3600 s, as in AS-1..12)."""
    return Config(
        serbero=SerberoConfig(private_key=Secret(serbero.secret.hex()), db_path=db_path),
        mostro=MostroConfig(pubkey=mostro.public_hex),
        relays=tuple(RelayConfig(url=url) for url in relay_urls),
        solvers=tuple(solvers),
        timeouts=TimeoutsConfig(
            renotification_seconds=renotification_seconds,
            renotification_check_interval_seconds=renotification_check_interval_seconds,
        ),
        notifications=NotificationsConfig(resolution=resolution_notices),
    )


@asynccontextmanager
async def running_daemon(config: Config, **kwargs: Any) -> AsyncIterator[DaemonContext]:
    """`serve` in a nursery; on leaving, trigger shutdown and require it within 2 s."""
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        context: DaemonContext = await nursery.start(
            partial(serve, config, shutdown=shutdown, relay_timing=FAST, **kwargs)
        )
        await context.pool.wait_connected()
        yield context
        shutdown.set()
        started = trio.current_time()
    assert trio.current_time() - started < SHUTDOWN_BUDGET


P = TypeVar("P", bound=ThreadedSdkPeer)


@asynccontextmanager
async def started(peer: P) -> AsyncIterator[P]:
    """Start a nostr-sdk peer off the Trio thread and close it the same way."""
    await trio.to_thread.run_sync(peer.start)
    try:
        yield peer
    finally:
        await trio.to_thread.run_sync(peer.close)


async def in_thread(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    """A blocking peer call (publish, wait_for_count) from a Trio test."""
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def query(db_path: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the daemon's database from outside, as an operator's `sqlite3` would."""
    conn = apsw.Connection(db_path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(row) for row in conn.execute(sql, args)]
    finally:
        conn.close()


def count_rows(db_path: str, table: str, where: str = "1", args: tuple[Any, ...] = ()) -> int:
    return int(scalar(db_path, f"SELECT COUNT(*) FROM {table} WHERE {where}", args))


def scalar(db_path: str, sql: str, args: tuple[Any, ...] = ()) -> Any:
    return query(db_path, sql, args)[0][0]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (for an endpoint a test configures)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(
    check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll `check` (e.g. a database probe) until it holds; fail after `timeout`."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(interval)


class Harness:
    """One relay, a Mostro simulator, solver inboxes and a daemon config over a fresh DB.

    `solver_keys` are the valid solvers (each with an inbox, in config order); `extra`
    solver entries (e.g. a malformed key) follow them in the config.
    """

    def __init__(
        self,
        relay_url: str,
        db_path: str,
        *,
        valid_solvers: int = 2,
        permissions: Sequence[Permission] = (),
        extra: Sequence[SolverConfig] = (),
        **config: Any,
    ) -> None:
        self.relay_url = relay_url
        self.db_path = db_path
        self.serbero = Keys.generate()
        self.mostro = Keys.generate()
        self.solver_keys = [Keys.generate() for _ in range(valid_solvers)]
        chosen = list(permissions) or ["read"] * valid_solvers
        solvers = [
            SolverConfig.from_text(keys.public_hex, permission)
            for keys, permission in zip(self.solver_keys, chosen, strict=True)
        ]
        self.config = make_config(
            db_path,
            [relay_url],
            serbero=self.serbero,
            mostro=self.mostro,
            solvers=[*solvers, *extra],
            **config,
        )
        self.sim = MostroSim(self.mostro.secret.hex(), [relay_url])
        self.inboxes = [SolverInbox(keys.secret.hex(), [relay_url]) for keys in self.solver_keys]

    async def __aenter__(self) -> Harness:
        for peer in (self.sim, *self.inboxes):
            await trio.to_thread.run_sync(peer.start)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for peer in (self.sim, *self.inboxes):
            await trio.to_thread.run_sync(peer.close)

    async def wait_dms(self, count: int, containing: str = "") -> list[list[ReceivedDm]]:
        """Every inbox holds at least `count` DMs containing `containing`; their DMs."""
        return [
            await in_thread(inbox.wait_for_count, count, DM_TIMEOUT, containing)
            for inbox in self.inboxes
        ]

    def dm_counts(self) -> list[int]:
        return [len(inbox.messages()) for inbox in self.inboxes]

    def rows(self, table: str, where: str = "1", args: tuple[Any, ...] = ()) -> int:
        return count_rows(self.db_path, table, where, args)

    def state(self, dispute_id: str) -> str:
        return str(
            scalar(
                self.db_path,
                "SELECT lifecycle_state FROM disputes WHERE dispute_id = ?",
                (dispute_id,),
            )
        )

    async def settled(self, context: DaemonContext, events: int) -> None:
        """Ingest decided `events` dispute events and the outbox owes nothing more."""

        def done() -> bool:
            snap = context.snapshot()
            return (
                snap.events_received >= events
                and snap.decisions_in_flight == 0
                and snap.outbox_in_flight == 0
                and self.rows("notification_outbox", "state = 'pending'") == 0
            )

        await eventually(done)
