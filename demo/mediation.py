"""The demo's mediation side: a scripted reasoning model and the parties of each dispute.

The model is the scripted API server from tests/support (real HTTP on loopback: the daemon's
`openai-compatible` provider talks to it as it would to a hosted model); what it answers is
this module's script, chosen by the story the scenario cast the dispute in:

- `SUMMARY`: asked one question each, the parties tell the same story, so the model reads a
  resolvable coordination failure and writes the solver a summary;
- `CONFLICT`: the parties contradict each other, so the model flags conflicting claims and
  the policy escalates: the write solver gets the handoff;
- `SOLVER_FIRST`: a human solver took the dispute first, so Mostro refuses Serbero's take.

Each mediated dispute's buyer and seller are `ChatParty` peers on the order's trade keys:
they print what Serbero asks them and answer it with their line of the script.
"""

from __future__ import annotations

import enum
import json
import re
import threading
from collections.abc import Callable
from typing import Final

import msgspec

from demo.console import Console
from serbero.reasoning.prompting import EMPTY_TRANSCRIPT
from tests.support.chat_party import ChatNote, ChatParty
from tests.support.scripted_llm import RecordedRequest, Reply, openai_reply
from tests.support.sdk_thread import PublishError

__all__ = [
    "OPENING_VERDICT",
    "REPLY_AFTER",
    "SCRIPTS",
    "Parties",
    "Script",
    "ScriptedModel",
    "Story",
]

# Seconds a party takes to answer once both parties were asked.
REPLY_AFTER: Final = 1.5
HEALTH_ANSWER: Final = "ok"

_DISPUTE_LINE: Final = re.compile(r"^dispute_id: (\S+)$", re.MULTILINE)
_CLASSIFY_TASK: Final = "## Task\n\nClassify"
_SUMMARY_TASK: Final = "## Task\n\nSummarise"

Later = Callable[[float, Callable[[], None]], None]


class Story(enum.StrEnum):
    SUMMARY = "summary"
    CONFLICT = "conflict"
    SOLVER_FIRST = "solver-first"


class Script(msgspec.Struct, frozen=True, kw_only=True):
    """What each party answers the model's question, and the model's verdict on the answers
    (a classification JSON), plus the summary for a story that ends in one."""

    buyer_answer: str
    seller_answer: str
    verdict: dict[str, object]
    summary: str = ""


# The verdict before the take: a question for each party, whatever the story.
OPENING_VERDICT: Final = json.dumps(
    {
        "classification": "coordination_failure_resolvable",
        "confidence": 0.7,
        "suggested_action": "ask_clarification",
        "rationale": "Each party should say what they see before anyone judges.",
        "flags": [],
        "buyer_clarification": "When did you send the fiat payment, and with which reference?",
        "seller_clarification": "Could you check your account for a payment for this order?",
    }
)
SCRIPTS: Final = {
    Story.SUMMARY: Script(
        buyer_answer="I sent it at 10:02 with reference MOSTRO-4821; my bank shows it completed.",
        seller_answer="Found it: MOSTRO-4821 arrived this morning, my bank held it for a check.",
        verdict={
            "classification": "coordination_failure_resolvable",
            "confidence": 0.9,
            "suggested_action": "summarize",
            "rationale": "Both parties describe the same transfer; the delay was the bank's.",
            "flags": [],
        },
        summary=(
            "The buyer paid at 10:02 (reference MOSTRO-4821). The seller first missed the"
            " payment because their bank held it for a check, and now confirms it arrived."
            "\nSUGGESTED_NEXT_STEP: check the seller's confirmation in the chat and decide the"
            " dispute in the buyer's favour if it holds."
            "\nRATIONALE: both parties describe the same transfer and agree it arrived."
        ),
    ),
    Story.CONFLICT: Script(
        buyer_answer="I paid the full amount yesterday, the receipt is in the order chat.",
        seller_answer="Nothing arrived. That receipt is edited: the amount and name are wrong.",
        verdict={
            "classification": "conflicting_claims",
            "confidence": 0.85,
            "suggested_action": "escalate",
            "rationale": "The buyer says they paid; the seller says the receipt is forged.",
            "flags": ["conflicting_claims"],
        },
    ),
}


class ScriptedModel:
    """Answers the daemon's reasoning calls by the story of the dispute they name, and says
    on the console what it was asked and what it answered.

    A classification on an empty transcript (the verdict before the take) asks both parties
    a question; one on their answers gives the story's verdict; a summary call gets the
    story's summary. A call without a dispute (the start-up health check) gets a short text.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._lock = threading.Lock()
        self._stories: dict[str, Story] = {}

    def cast(self, dispute_id: str, story: Story) -> None:
        with self._lock:
            self._stories[dispute_id] = story

    def __call__(self, request: RecordedRequest) -> Reply:
        prompt = str(request.json()["messages"][-1]["content"])
        found = _DISPUTE_LINE.search(prompt)
        if found is None:
            return openai_reply(HEALTH_ANSWER)
        dispute_id = found.group(1)
        with self._lock:
            script = SCRIPTS.get(self._stories.get(dispute_id, Story.SOLVER_FIRST))
        short = self._console.shorten(dispute_id)
        if _SUMMARY_TASK in prompt and script is not None:
            self._console.line("model", f"summarize {short}: the summary for the solver")
            return openai_reply(script.summary)
        if _CLASSIFY_TASK not in prompt:
            return openai_reply(HEALTH_ANSWER)
        if EMPTY_TRANSCRIPT in prompt or script is None:
            self._console.line("model", f"classify {short}: ask each party a question")
            return openai_reply(OPENING_VERDICT)
        verdict = script.verdict
        self._console.line(
            "model",
            f"classify {short} on the parties' answers: {verdict['classification']}"
            f" {verdict['confidence']}, {verdict['suggested_action']}",
        )
        return openai_reply(json.dumps(verdict))


class Parties:
    """The buyer and the seller of one mediated dispute, on the order's trade keys. Each
    prints what Serbero writes to it; once both were asked, both answer (`later` runs the
    answers off the parties' own threads)."""

    def __init__(
        self,
        console: Console,
        dispute_id: str,
        script: Script,
        trade_secrets: tuple[str, str],
        serbero_pubkey: str,
        relay_url: str,
        later: Later,
    ) -> None:
        self._console = console
        self._short = console.shorten(dispute_id)
        self._script = script
        self._later = later
        self._lock = threading.Lock()
        self._asked: set[str] = set()
        self._answered = False
        buyer, seller = trade_secrets
        self._buyer = ChatParty(
            buyer, serbero_pubkey, [relay_url], on_note=lambda n: self._note("buyer", n)
        )
        self._seller = ChatParty(
            seller, serbero_pubkey, [relay_url], on_note=lambda n: self._note("seller", n)
        )

    def start(self) -> None:
        self._buyer.start()
        self._seller.start()

    def close(self) -> None:
        self._buyer.close()
        self._seller.close()

    def _note(self, party: str, note: ChatNote) -> None:
        self._console.line(party, f"<- chat from serbero ({self._short})", note.content)
        with self._lock:
            self._asked.add(party)
            due = len(self._asked) == 2 and not self._answered
            self._answered = self._answered or due
        if due:
            self._later(REPLY_AFTER, self._answer)

    def _answer(self) -> None:
        for party, peer, text in (
            ("buyer", self._buyer, self._script.buyer_answer),
            ("seller", self._seller, self._script.seller_answer),
        ):
            self._console.line(party, f"-> chat to serbero ({self._short})", text)
            try:
                peer.reply(text)
            except (PublishError, TimeoutError, RuntimeError) as exc:
                self._console.line(party, f"could not answer: {exc}")
