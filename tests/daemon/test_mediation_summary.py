"""A summary through the daemon (§11, Q-2, MAS-10/11): the model's verdict at open is
Summarize, so the session is left `classified`; the engine's tick asks the model for the
summary and the solvers read it; the session closes once the DM is out.

Real parts: the daemon in-process over a real SQLite file, a LocalRelay, Mostro simulated on
nostr-sdk answering the take, solver inboxes, and the scripted model API on loopback HTTP.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import trio

from tests.daemon.mediation_support import (
    SUMMARIZE_VERDICT,
    mediation_harness,
    summary_read_and_closed,
)
from tests.daemon.support import in_thread, query
from tests.daemon.test_mediation_engine import empty_working_directory, engine_daemon, mediated
from tests.reasoning.helpers import SUMMARY_ANSWER
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import RecordedRequest, Reply, open_scripted_llm, openai_reply

__all__ = ["empty_working_directory"]


def answer(request: RecordedRequest) -> Reply:
    """Health check, verdict (Summarize), then the summary when it is asked for."""
    prompt = json.dumps(request.json()["messages"])
    if "dispute_id" not in prompt:
        return openai_reply("pong")
    if "SUGGESTED_NEXT_STEP:" in prompt:
        return openai_reply(SUMMARY_ANSWER)
    return openai_reply(SUMMARIZE_VERDICT)


async def test_q2_an_open_time_summary_reaches_every_solver_and_closes_the_session(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    async with (
        open_scripted_llm(answer) as llm,
        mediation_harness(local_relay.url, db_path) as h,
        engine_daemon(mediated(h, llm, tick=1)),
    ):
        await in_thread(h.sim.open_dispute, dispute, "buyer")
        await summary_read_and_closed(h, db_path)
        await trio.sleep(2.5)  # more ticks: nothing more to deliver, nothing to start again
    assert [inbox.count_containing("Suggested next step:") for inbox in h.inboxes] == [1, 1]
    # the closed session keeps the dispute from a second verdict and take.
    assert [request.dispute_id for request in h.sim.take_requests()] == [dispute]
    kinds = [row[0] for row in query(db_path, "SELECT kind FROM mediation_events ORDER BY id")]
    assert kinds.count("start_attempt_started") == 1
    assert kinds.count("summary_generated") == 1
    assert "escalation_recommended" not in kinds
    assert query(
        db_path,
        "SELECT COUNT(*) FROM notifications WHERE notif_type = 'mediation_summary'"
        " AND status = 'sent'",
    ) == [(2,)]
