"""10,000 disputes over two relays that go down and come back, three solvers, the real daemon
(issue #7 item 3). Settings come from STRESS_DISPUTES, STRESS_RATE, STRESS_BUDGET and
STRESS_SEED; the figures are printed (run with `-s`, as `just stress` does)."""

from __future__ import annotations

from tests.stress.harness import StressRun, StressSettings


def test_every_dispute_reaches_every_solver_while_relays_flap() -> None:
    report = StressRun(StressSettings.from_env()).run()
    failures = "; ".join(f"{check.name}: {check.detail}" for check in report.failures())
    assert report.ok, f"stress run failed (seed {report.seed}): {failures}"
