"""Relay outages for the stress run: a seeded plan, and a thread that carries it out.

The plan puts each relay down a few times on its own and once both together, at random
points of a time window, with a minimum quiet spell between outages. The spell matters
because LocalRelay keeps events in memory only: a restarted relay comes back empty, and
nostr-sdk clients (Mostro, the solver inboxes) reconnect no sooner than 5 s after a drop.
A relay that went down again before those clients were back could take with it DMs it alone
had accepted; the quiet spell keeps such losses out of the plan, so a DM that never arrives
is the daemon's doing, not the harness's.

A relay goes down in two steps: its gate closes (nothing new is acknowledged, what was is
delivered, then every client is cut off, `gate.py`), then its process stops. It comes back
the other way round. The relays of a joint outage go down (and up) at the same moment: one
after the other, the second would alone accept events for the half second the first one
takes to stop.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

import msgspec

from tests.stress.gate import Gates
from tests.stress.schedule import PlanRunner
from tests.support.relay_fixtures import LocalRelayProcess

# A relay's solo outages (each relay is down this many times on its own).
SOLO_OUTAGES: Final = (3, 4)
SOLO_SECONDS: Final = (1.0, 5.0)
# The one outage that takes every relay down at once: short, "never both for too long".
JOINT_SECONDS: Final = (1.0, 3.0)
# Both relays up for at least this long between two outages: nostr-sdk's 5 s reconnect,
# plus the replay of what was stored meanwhile.
MIN_QUIET_SECONDS: Final = 10.0


class Outage(msgspec.Struct, frozen=True):
    """`relays` (indexes) go down `at` seconds into the run for `seconds`."""

    relays: tuple[int, ...]
    at: float
    seconds: float


class OutageRecord(msgspec.Struct, frozen=True):
    """What happened: when the relays' gates cut the clients off (monotonic and wall clock),
    and when they let them in again, the relays running (a restart spawns a process, so the
    real outage is a little longer than planned)."""

    outage: Outage
    stopped_at: float
    stopped_wall: float
    restarted_at: float
    restarted_wall: float

    @property
    def down_seconds(self) -> float:
        return self.restarted_at - self.stopped_at


def plan_outages(rng: random.Random, relay_count: int, window: tuple[float, float]) -> list[Outage]:
    """Solo outages for every relay and one joint outage, in random order, at random times
    within `window` (seconds from the start), separated by at least `MIN_QUIET_SECONDS`.
    Raises ValueError when the window cannot hold them."""
    outages: list[tuple[tuple[int, ...], float]] = []
    for relay in range(relay_count):
        for _ in range(rng.randint(*SOLO_OUTAGES)):
            outages.append(((relay,), rng.uniform(*SOLO_SECONDS)))
    outages.append((tuple(range(relay_count)), rng.uniform(*JOINT_SECONDS)))
    rng.shuffle(outages)
    start, end = window
    fixed = sum(seconds for _, seconds in outages) + MIN_QUIET_SECONDS * len(outages)
    slack = end - start - fixed
    if slack < 0:
        raise ValueError(
            f"{len(outages)} outages need {fixed:.0f} s; the window holds {end - start:.0f} s"
        )
    # Random gaps: the slack split by uniform weights, on top of the minimum quiet spell.
    weights = [rng.random() for _ in range(len(outages) + 1)]
    scale = slack / sum(weights)
    plan = []
    at = start
    for (relays, seconds), weight in zip(outages, weights, strict=False):
        at += weight * scale
        plan.append(Outage(relays=relays, at=round(at, 2), seconds=round(seconds, 2)))
        at += seconds + MIN_QUIET_SECONDS
    return plan


class OutageRunner(PlanRunner[Outage, OutageRecord]):
    """Carries out a plan against running relays and their gates on a thread; `records()`
    says what it did. `stop()` ends it early and leaves every relay running and reachable."""

    def __init__(
        self, relays: Sequence[LocalRelayProcess], gates: Gates, plan: Sequence[Outage]
    ) -> None:
        super().__init__(plan, "outages")
        self._relays = list(relays)
        self._gates = gates

    def stop(self) -> None:
        super().stop()
        for index, relay in enumerate(self._relays):
            if not relay.running:
                relay.start()
                self._gates.open(index)

    def down(self) -> list[int]:
        """Indexes of the relays stopped right now."""
        return [index for index, relay in enumerate(self._relays) if not relay.running]

    def carry_out(self, outage: Outage) -> OutageRecord:
        relays = [self._relays[index] for index in outage.relays]
        _at_once([partial(self._gates.close, index) for index in outage.relays])
        # The outage starts when the clients are cut off.
        stopped_at, stopped_wall = time.monotonic(), time.time()
        _at_once([relay.stop for relay in relays])
        self.cancelled.wait(max(0.0, stopped_at + outage.seconds - time.monotonic()))
        _at_once([relay.start for relay in relays])
        _at_once([partial(self._gates.open, index) for index in outage.relays])
        return OutageRecord(
            outage=outage,
            stopped_at=stopped_at,
            stopped_wall=stopped_wall,
            restarted_at=time.monotonic(),
            restarted_wall=time.time(),
        )


def _at_once(actions: Sequence[Callable[[], None]]) -> None:
    """Run the actions on threads of their own and wait for all; the first error is raised."""
    errors: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(action,), daemon=True) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
