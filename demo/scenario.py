"""Mostro's side of the demo on a timeline: disputes open, are mediated or taken, and close.

A dispute opens every `OPEN_EVERY` seconds, cast in turn in one of three stories
(`demo.mediation.Story`):

- `SUMMARY`: Serbero mediates: the model asks each party a question, they agree, the
  solvers get the model's summary; Mostro closes the dispute `settled` later;
- `CONFLICT`: Serbero mediates: the parties contradict each other, Serbero escalates on
  conflicting claims and the write solver gets the handoff, takes the dispute and refunds
  the seller;
- `SOLVER_FIRST`: a solver takes the dispute as it opens, so Mostro refuses Serbero's take;
  the solver closes it (`released`).

Actions run on the thread that calls `run_until`; `later` may be called from any thread
(the parties answer from theirs).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Final

from demo.console import Console
from demo.mediation import SCRIPTS, Parties, ScriptedModel, Story
from tests.support.mostro_sim import MostroSim
from tests.support.sdk_thread import PublishError

__all__ = ["OPEN_EVERY", "STORIES", "Scenario", "Solver"]

# Seconds between disputes, and when each story's next step comes after its dispute opened.
OPEN_EVERY: Final = 6.0
WRITE_SOLVER_TAKES_AFTER: Final = 16.0
MEDIATED_CLOSE_AFTER: Final = 20.0
SOLVER_FIRST_CLOSE_AFTER: Final = 4.0
STORIES: Final = (Story.SUMMARY, Story.CONFLICT, Story.SOLVER_FIRST)
# Mostro's answer to a take of a dispute another solver already took.
ALREADY_TAKEN: Final = "invalid_pubkey"
# How often the timeline looks for work and for a stop request, in seconds.
POLL_SECONDS: Final = 0.1

Action = Callable[[], None]


class Solver:
    """A solver as the scenario needs it: a name, a key and its permission."""

    def __init__(self, label: str, pubkey: str, permission: str) -> None:
        self.label = label
        self.pubkey = pubkey
        self.permission = permission


class Scenario:
    """Mostro's timeline and the parties of each mediated dispute."""

    def __init__(
        self,
        *,
        mostro: MostroSim,
        model: ScriptedModel,
        console: Console,
        solvers: Iterable[Solver],
        serbero_pubkey: str,
        relay_url: str,
    ) -> None:
        self._mostro = mostro
        self._model = model
        self._console = console
        self._solvers = list(solvers)
        self._serbero_pubkey = serbero_pubkey
        self._relay_url = relay_url
        self._lock = threading.Lock()
        self._queue: list[tuple[float, int, Action]] = []
        self._order = itertools.count()
        self._disputes = itertools.count(1)
        self._parties: list[Parties] = []

    def start(self) -> None:
        self.later(0.0, self._open_next)

    def later(self, delay: float, action: Action) -> None:
        """Run `action` on the timeline `delay` seconds from now (thread-safe)."""
        with self._lock:
            heapq.heappush(self._queue, (time.monotonic() + delay, next(self._order), action))

    def run_until(self, stop: threading.Event, deadline: float | None) -> None:
        """Perform due actions until `stop` is set or `deadline` (monotonic) passes."""
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            with self._lock:
                due = (
                    heapq.heappop(self._queue)[2]
                    if self._queue and self._queue[0][0] <= now
                    else None
                )
            if due is None:
                stop.wait(POLL_SECONDS)
            else:
                due()

    def close(self) -> None:
        """Disconnect the parties still on the relay."""
        with self._lock:
            parties, self._parties = self._parties, []
        for pair in parties:
            pair.close()

    def _open_next(self) -> None:
        number = next(self._disputes)
        self.later(OPEN_EVERY, self._open_next)
        story = STORIES[(number - 1) % len(STORIES)]
        dispute_id = str(uuid.uuid4())
        initiator = "buyer" if number % 2 else "seller"
        self._model.cast(dispute_id, story)
        if story is Story.SOLVER_FIRST:
            self._solver_first(
                dispute_id, initiator, self._solvers[(number - 1) % len(self._solvers)]
            )
            return
        parties = self._parties_of(dispute_id, story)
        if parties is None or not self._publish(
            f"opens dispute {dispute_id} (initiator: {initiator})",
            lambda: self._mostro.open_dispute(dispute_id, initiator=initiator),
        ):
            return
        if story is Story.CONFLICT:
            writer = next(s for s in self._solvers if s.permission == "write")
            self.later(WRITE_SOLVER_TAKES_AFTER, lambda: self._take(dispute_id, writer))
            outcome = "seller-refunded"
        else:
            outcome = "settled"
        self.later(MEDIATED_CLOSE_AFTER, lambda: self._close(dispute_id, outcome, parties))

    def _parties_of(self, dispute_id: str, story: Story) -> Parties | None:
        """The dispute's buyer and seller, on the chat before Serbero writes to them."""
        parties = Parties(
            self._console,
            dispute_id,
            SCRIPTS[story],
            self._mostro.trade_keys(dispute_id),
            self._serbero_pubkey,
            self._relay_url,
            self.later,
        )
        try:
            parties.start()
        except (TimeoutError, RuntimeError) as exc:
            self._console.line("demo", f"the parties could not connect: {exc}")
            parties.close()
            return None
        with self._lock:
            self._parties.append(parties)
        return parties

    def _solver_first(self, dispute_id: str, initiator: str, solver: Solver) -> None:
        self._mostro.refuse_take(dispute_id, ALREADY_TAKEN)
        if not self._publish(
            f"opens dispute {dispute_id} (initiator: {initiator})",
            lambda: self._mostro.open_dispute(dispute_id, initiator=initiator),
        ):
            return
        self._take(dispute_id, solver)
        self.later(SOLVER_FIRST_CLOSE_AFTER, lambda: self._close(dispute_id, "released", None))

    def _take(self, dispute_id: str, solver: Solver) -> None:
        self._publish(
            f"{solver.label} takes dispute {dispute_id}",
            lambda: self._mostro.take_dispute(dispute_id, solver_pubkey=solver.pubkey),
        )

    def _close(self, dispute_id: str, status: str, parties: Parties | None) -> None:
        self._publish(
            f"closes dispute {dispute_id}: {status}",
            lambda: self._mostro.resolve(dispute_id, status=status),
        )
        if parties is not None:
            with self._lock:
                if parties in self._parties:
                    self._parties.remove(parties)
            parties.close()

    def _publish(self, what: str, publish: Callable[[], str]) -> bool:
        self._console.line("mostro", self._console.shorten(what))
        try:
            publish()
        except (PublishError, TimeoutError, RuntimeError) as exc:
            self._console.line("mostro", f"publish failed: {exc}")
            return False
        return True
