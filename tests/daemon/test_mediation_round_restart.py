"""A follow-up round across `kill -9` of the `serbero` script (§9.1, MED-82, MED-94, Q-4).

The `Round N.` pair and the session's marker are written in one transaction before anything
is published; after a crash the restart publishes what is unsent, as the same events, and the
marker keeps the answers that led to the round from being classified again.

The daemon runs as a subprocess behind a filtering relay (which holds the round's chat wraps
back while the test wants them unsent) in front of a LocalRelay; Mostro is simulated on
nostr-sdk answering the take, the parties answer on their real trade keys, the scripted model
answers on loopback HTTP and the solvers read their DMs.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
import trio

from tests.daemon.mediation_support import (
    SUMMARIZE_VERDICT,
    WAIT,
    mediation_harness,
    opening_received,
    parties,
    refuse_chat_of,
    summary_read_and_closed,
    write_mediation_config,
)
from tests.daemon.process import DaemonProcess
from tests.daemon.support import eventually, in_thread, query
from tests.daemon.test_mediation_restart import QUIET_TICKS, killed, stopped
from tests.reasoning.helpers import ASK_ANSWER, SUMMARY_ANSWER
from tests.support.filtering_relay import open_filtering_relay
from tests.support.relay_fixtures import LocalRelayProcess
from tests.support.scripted_llm import (
    RecordedRequest,
    Reply,
    open_scripted_llm,
    openai_reply,
)

FIRST = ("I paid at 10:00 from my bank.", "Nothing has arrived yet.")
SECOND = ("Here is the bank reference 4471.", "Found it now, it was late.")
OPENING = ["Buyer: When did you pay?", "Seller: Please check again."]
# Where the first daemon dies: while the model reads the first answers; with `Round 1.`
# stored but no relay having taken it; after it was published.
CLASSIFYING, ROUND_UNSENT, ROUND_PUBLISHED = "classifying", "round-unsent", "round-published"
ROUND_1 = ["Round 1. Buyer: When did you pay?", "Round 1. Seller: Please check again."]


@pytest.fixture(autouse=True)
def reasoning_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERBERO_REASONING_API_KEY", "sk-scripted")


class RoundModel:
    """The open's verdict and the first answers' reading ask; once the second answers are in
    the transcript the reading is Summarize; then the summary. `classified` names what each
    classify call had read: `open`, `first` or `second`; with `stall`, the first call that
    reads the first answers is never answered."""

    def __init__(self, *, stall: bool = False) -> None:
        self.classified: list[str] = []
        self.stall = stall

    def __call__(self, request: RecordedRequest) -> Reply:
        prompt = json.dumps(request.json()["messages"])
        if "dispute_id" not in prompt:
            return openai_reply("pong")
        if "SUGGESTED_NEXT_STEP:" in prompt:
            return openai_reply(SUMMARY_ANSWER)
        if SECOND[1] in prompt:
            self.classified.append("second")
            return openai_reply(SUMMARIZE_VERDICT)
        if FIRST[1] not in prompt:
            self.classified.append("open")
            return openai_reply(ASK_ANSWER)
        self.classified.append("first")
        stalled, self.stall = self.stall, False
        return openai_reply(ASK_ANSWER, delay=math.inf if stalled else 0.0)


def outbound(db_path: str) -> list[tuple[str, str, str, bool]]:
    """Every outbound row: content, inner id, outer id and whether `outbound_sent` names it."""
    return [
        (str(content), str(inner), str(outer), bool(sent))
        for content, inner, outer, sent in query(
            db_path,
            "SELECT m.content, m.inner_event_id, m.outer_event_id, EXISTS (SELECT 1"
            " FROM mediation_events e WHERE e.kind = 'outbound_sent'"
            " AND json_extract(e.payload_json, '$.inner_event_id') = m.inner_event_id)"
            " FROM mediation_messages m WHERE m.direction = 'outbound' ORDER BY m.id",
        )
    ]


def sent_of_four(db_path: str) -> int | None:
    """Once the opening and `Round 1.` rows are stored: how many have `outbound_sent`."""
    rows = outbound(db_path)
    return sum(sent for *_, sent in rows) if len(rows) == 4 else None


def marker(db_path: str) -> tuple[int, int]:
    [(round_count, evaluated)] = query(
        db_path, "SELECT round_count, round_count_last_evaluated FROM mediation_sessions"
    )
    return int(round_count), int(evaluated)


@pytest.mark.parametrize("crash", [CLASSIFYING, ROUND_UNSENT, ROUND_PUBLISHED])
async def test_kill_9_around_a_follow_up_round_sends_it_once_and_classifies_once(
    local_relay: LocalRelayProcess, tmp_path: Path, crash: str
) -> None:
    """The parties answer the opening, the model asks again, and the daemon is killed: while
    the model reads the answers (nothing committed, MED-94), with `Round 1.` stored but
    unsent (no relay took the wraps, Q-4), or after it was published. After the restart
    each party holds exactly one `Round 1.` message, the stored event; answers whose round
    was committed are not classified again and no second round is written for them; the
    parties' next answers lead to the summary the solvers read."""
    dispute = str(uuid.uuid4())
    db_path = str(tmp_path / "serbero.db")
    model = RoundModel(stall=crash == CLASSIFYING)
    async with (
        open_scripted_llm(model) as llm,
        open_filtering_relay(local_relay.url) as relay,
        mediation_harness(relay.url, db_path, mostro_relay=local_relay.url) as h,
    ):
        mostro, serbero_hex = h.sim, h.serbero.public_hex
        config = write_mediation_config(
            tmp_path, h, relay_url=relay.url, llm_url=llm.url, max_rounds=3
        )
        async with parties(mostro, dispute, serbero_hex, local_relay.url) as (buyer, seller):
            first = DaemonProcess(config, h.serbero)
            try:
                await opening_received(first, mostro, dispute, buyer, seller)
                if crash == ROUND_UNSENT:
                    relay.refuse = refuse_chat_of(h, dispute)
                await in_thread(buyer.reply, FIRST[0])
                await in_thread(seller.reply, FIRST[1])
                if crash == CLASSIFYING:
                    await eventually(lambda: "first" in model.classified, WAIT)
                elif crash == ROUND_UNSENT:
                    # Every try of the round's publish was refused (not yet the next pass's).
                    await in_thread(first.wait_for_event, "mediation_follow_up_sent", WAIT)
                else:
                    await in_thread(buyer.wait_for_count, 2, WAIT)
                    await in_thread(seller.wait_for_count, 2, WAIT)
                    await eventually(lambda: sent_of_four(db_path) == 4, WAIT)
                killed(first)
            finally:
                first.stop()
            follow_ups = [
                (record["round"], record["buyer_sent"], record["seller_sent"])
                for record in first.records
                if record.get("event") == "mediation_follow_up_sent"
            ]
            at_kill = outbound(db_path)
            marker_at_kill = marker(db_path)
            notes_at_kill = len(buyer.notes()), len(seller.notes())

            relay.refuse = lambda event: False
            second = DaemonProcess(config, h.serbero)
            try:
                resumed = await in_thread(second.wait_for_event, "mediation_resumed", WAIT)
                buyer_notes = await in_thread(buyer.wait_for_count, 2, WAIT)
                seller_notes = await in_thread(seller.wait_for_count, 2, WAIT)
                # Ticks that re-read the first answers from the relays and find nothing new.
                await trio.sleep(QUIET_TICKS)
                classified_before_answers = list(model.classified)
                await in_thread(buyer.reply, SECOND[0])
                await in_thread(seller.reply, SECOND[1])
                # The session closes with the record of a relay's acceptance of the DM.
                await summary_read_and_closed(h, db_path)
                stopped(second)
            finally:
                second.stop()
            final_notes = buyer.notes(), seller.notes()

    committed = crash != CLASSIFYING
    published = crash == ROUND_PUBLISHED
    assert [content for content, *_ in at_kill] == OPENING + (ROUND_1 if committed else [])
    assert [sent for *_, sent in at_kill] == [True, True] + [published] * (len(at_kill) - 2)
    assert marker_at_kill == (1, 2 if committed else 0)
    assert follow_ups == ([(1, published, published)] if committed else [])
    assert notes_at_kill == ((2, 2) if published else (1, 1))
    assert resumed["republished"] == (2 if crash == ROUND_UNSENT else 0)

    # One `Round 1.` per party, the event stored (before the kill, when it was committed).
    stored = outbound(db_path)
    assert [(content, sent) for content, _, _, sent in stored] == [
        (content, True) for content in OPENING + ROUND_1
    ]
    assert [row[:3] for row in stored[: len(at_kill)]] == [row[:3] for row in at_kill]
    for notes, (_, inner, outer, _) in zip(final_notes, stored[2:], strict=True):
        assert len(notes) == 2
        assert (notes[1].inner_id, notes[1].wrap_id) == (inner, outer)
    assert [note.content for note in buyer_notes] == [OPENING[0], ROUND_1[0]]
    assert [note.content for note in seller_notes] == [OPENING[1], ROUND_1[1]]

    # The first answers were classified once more only when the kill came before their
    # round's commit (Q-1's pass after the restart); the second answers once.
    reads_of_first = ["first", "first"] if crash == CLASSIFYING else ["first"]
    assert classified_before_answers == ["open", *reads_of_first]
    assert model.classified == ["open", *reads_of_first, "second"]
    produced = query(
        db_path, "SELECT COUNT(*) FROM mediation_events WHERE kind = 'classification_produced'"
    )
    assert produced == [(3,)]
    assert marker(db_path) == (2, 4)
