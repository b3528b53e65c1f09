"""The escalation dispatcher ("phase 4"): the scanner and the gate, wired by two channels.

The supervisor starts `run_dispatcher` once, after migration, when `[escalation].enabled`
(ESC-8); it shares no state with anything else and ends by cancellation (ESC-30). Both
channels are unbuffered on purpose: the scanner hands over exactly one handoff and waits for
its report, so nothing is ever queued between them (ESC-15).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import trio

from serbero.actors import gate as gate_actor
from serbero.actors import scanner as scanner_actor
from serbero.actors.delivery import Deliver
from serbero.actors.gate import Gate, HandoffDone
from serbero.actors.tracker import Tracker
from serbero.clock import WallClock
from serbero.config import EscalationConfig, SolverConfig
from serbero.log import get_logger
from serbero.store.escalation import HandoffRow

__all__ = [
    "HANDOFF_CHANNEL_SIZE",
    "log_dispatcher_settings",
    "run_dispatcher",
]

log = get_logger("serbero.escalation")

# Rendezvous: the scanner gives the gate one handoff, then waits for its report.
HANDOFF_CHANNEL_SIZE: Final = 0


def log_dispatcher_settings(settings: EscalationConfig, solvers: Sequence[SolverConfig]) -> None:
    """ESC-8's start-up lines: enabled with its settings, or disabled; and the warning that,
    with no write solver and no fallback, every handoff will be recorded as unroutable."""
    if not settings.enabled:
        log.info("phase4_dispatcher_disabled")
        return
    write_solver_count = sum(solver.can_write for solver in solvers)
    log.info(
        "phase4_dispatcher_enabled",
        dispatch_interval_seconds=settings.dispatch_interval_seconds,
        fallback_to_all_solvers=settings.fallback_to_all_solvers,
        write_solver_count=write_solver_count,
    )
    if write_solver_count == 0 and not settings.fallback_to_all_solvers:
        log.warning(
            "phase4_no_write_solver",
            configured_solver_count=len(solvers),
            hint=(
                'no solver has permission = "write" and fallback_to_all_solvers is false:'
                " every handoff will be recorded as unroutable"
            ),
        )


async def run_dispatcher(
    tracker: Tracker,
    deliver: Deliver,
    *,
    settings: EscalationConfig,
    solvers: Sequence[SolverConfig],
    wall_clock: WallClock,
    ring_sender: Callable[[], None] = lambda: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the scanner and the gate until cancelled; the first cycle is one interval away.
    `ring_sender` wakes the outbox sender for the DMs a dispatch queued to retry.

    `solvers` and `settings` are a start-up snapshot (ESC-4); the start-up log lines are the
    caller's (`log_dispatcher_settings`).
    """
    handoff_send, handoff_receive = trio.open_memory_channel[HandoffRow](HANDOFF_CHANNEL_SIZE)
    done_send, done_receive = trio.open_memory_channel[HandoffDone](HANDOFF_CHANNEL_SIZE)
    gate = Gate(
        tracker,
        deliver,
        solvers=solvers,
        fallback_to_all_solvers=settings.fallback_to_all_solvers,
        wall_clock=wall_clock,
        ring_sender=ring_sender,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate_actor.run, gate, handoff_receive, done_send)
        await nursery.start(
            partial(
                scanner_actor.run,
                tracker,
                handoff_send,
                done_receive,
                interval_seconds=settings.dispatch_interval_seconds,
            )
        )
        task_status.started()
