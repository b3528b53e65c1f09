"""The always-on daemon: process life (signals, exit status) around the supervisor.

`run_daemon` is what `serbero` with no arguments runs (the CLI has loaded the config and
configured logging): it runs `serve` under Trio, turns SIGINT/SIGTERM into a clean shutdown
(`shutdown_signal` ... `exited_cleanly`, exit 0, CORE-10) and a fatal error into
`daemon_terminated` and exit 1 (CORE-9).

`serve` is the same daemon in-process (CORE-12): give it a ready `Config`, an optional
external `shutdown` trigger and test clocks; it reports readiness with the running daemon's
`DaemonContext` (tracker, relay pool, live snapshot) and returns once shutdown is set.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from functools import partial
from typing import Final

import trio

from serbero.actors.relay import RelayTiming
from serbero.actors.restart import DaemonFatal, describe_error
from serbero.actors.supervisor import DaemonContext, run_supervisor
from serbero.clock import WallClock, system_wall_clock
from serbero.config import Config, LoadedConfig
from serbero.log import get_logger

__all__ = [
    "IN_PROCESS_CONFIG_PATH",
    "SHUTDOWN_SIGNALS",
    "DaemonContext",
    "DaemonFatal",
    "run_daemon",
    "serve",
]

log = get_logger("serbero.daemon")

SHUTDOWN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
# What `starting` reports as the config path when a test hands `serve` a Config object.
IN_PROCESS_CONFIG_PATH: Final = "<in-process>"


def _fatal_leaf(exc: BaseException) -> BaseException:
    """The error that ended the daemon, out of the nurseries' exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_fatal_leaf(inner) for inner in exc.exceptions]
        for leaf in leaves:
            if isinstance(leaf, DaemonFatal):
                return leaf
        return leaves[0]
    return exc


async def serve(
    config: Config,
    *,
    shutdown: trio.Event | None = None,
    wall_clock: WallClock = system_wall_clock,
    rand: Callable[[int], bytes] = os.urandom,
    relay_timing: RelayTiming | None = None,
    offload: bool = True,
    config_path: str = IN_PROCESS_CONFIG_PATH,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until `shutdown` is set (or, without one, until cancelled).

    Readiness (`task_status.started`) comes after `event_loop_started` with the running
    daemon's `DaemonContext`. A fatal error is logged as `daemon_terminated` and raised as
    `DaemonFatal`; a clean stop logs `exited_cleanly`. `offload=False` keeps SQLite on the
    Trio thread (for `autojump_clock` tests).
    """
    try:
        async with trio.open_nursery() as nursery:
            context: DaemonContext = await nursery.start(
                partial(
                    run_supervisor,
                    config,
                    config_path=config_path,
                    wall_clock=wall_clock,
                    rand=rand,
                    relay_timing=relay_timing,
                    offload=offload,
                    shutdown=shutdown,
                )
            )
            task_status.started(context)
    except Exception as exc:
        leaf = _fatal_leaf(exc)
        error = str(leaf) if isinstance(leaf, DaemonFatal) else describe_error(leaf)
        log.error("daemon_terminated", error=error)
        if isinstance(leaf, DaemonFatal):
            raise leaf from None
        raise DaemonFatal(error) from leaf
    log.info("exited_cleanly")


async def _watch_signals(
    shutdown: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """CORE-10: the first SIGINT/SIGTERM starts the shutdown; later ones are only noted."""
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if shutdown.is_set():
                log.debug("shutdown_signal_repeated", signal=name)
                continue
            log.info("shutdown_signal", signal=name)
            shutdown.set()


async def _main(loaded: LoadedConfig) -> int:
    shutdown = trio.Event()
    status = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, shutdown)
        try:
            await serve(loaded.config, shutdown=shutdown, config_path=loaded.path)
        except DaemonFatal:
            status = 1
        nursery.cancel_scope.cancel()
    return status


def run_daemon(loaded: LoadedConfig) -> int:
    """Run the daemon in this process until a signal or a fatal error; the exit status."""
    try:
        return trio.run(_main, loaded)
    except KeyboardInterrupt:
        # Ctrl-C in the instant before the signal watcher was installed.
        log.info("shutdown_signal", signal=signal.SIGINT.name)
        log.info("exited_cleanly")
        return 0
