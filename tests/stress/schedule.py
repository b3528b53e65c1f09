"""A timed fault plan carried out on a thread: each step at its offset from the start of the
load, a record of what was really done, and the first error ending the plan."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    @property
    def at(self) -> float: ...


Step = TypeVar("Step", bound=Timed)
Record = TypeVar("Record")


class PlanRunner(Generic[Step, Record]):
    """Runs `carry_out` for each step of a plan at `t0 + step.at`; `records()` says what was
    done, `errors()` what stopped the plan. `stop()` ends it early (the step under way sees
    `cancelled` set and finishes at once)."""

    def __init__(self, plan: Sequence[Step], name: str) -> None:
        self._plan = list(plan)
        self._records: list[Record] = []
        self._errors: list[str] = []
        self._lock = threading.Lock()
        self.cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._t0 = 0.0

    def carry_out(self, step: Step) -> Record:
        """Do one step of the plan; every runner overrides this."""
        raise NotImplementedError

    def start(self, t0: float) -> None:
        """Run the plan with `t0` (monotonic) as its zero."""
        self._t0 = t0
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        self.cancelled.set()
        if self._thread.is_alive():
            self._thread.join()

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def _run(self) -> None:
        for step in self._plan:
            if self.cancelled.wait(max(0.0, self._t0 + step.at - time.monotonic())):
                return
            try:
                record = self.carry_out(step)
            except Exception as exc:  # e.g. a relay that will not restart ends the plan
                with self._lock:
                    self._errors.append(f"{step}: {exc!r}")
                return
            with self._lock:
                self._records.append(record)
