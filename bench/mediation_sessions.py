"""Many mediation sessions at once through the real daemon: the parts of bench/mediation.

The daemon runs as an operator starts it (`bench.daemon_process`) with [mediation] and
[reasoning] on. Around it, each in its own process so its CPU is not the daemon's: the
LocalRelay, the scripted model (`model_role`), every party of every session on one relay
connection (`parties_role`, `ChatCrowd`) and the solver's inbox (bench.notify's). The
simulated Mostro answers the takes from the bench's own process.

The model plays a cooperative dispute: the open verdict asks both parties a question; a
follow-up evaluation asks again while only one party has answered and says `summarize` once
both have; the summary names the dispute on its first line, so the solver's DM can be matched
to its session.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
import nostr_sdk
import trio

from bench.reasoning import ASK_ANSWER, SUMMARY_ANSWER
from tests.support.chat_party import CHAT_WRAP_KIND, chat_wrap, shared_secret_hex, signed_note
from tests.support.scripted_llm import RecordedRequest, Reply, openai_reply
from tests.support.scripted_llm import serve_until_stdin_closes as serve_model
from tests.support.sdk_thread import ThreadedSdkPeer

SUMMARIZE_ANSWER: Final = msgspec.json.encode(
    {
        "classification": "coordination_failure_resolvable",
        "confidence": 0.86,
        "suggested_action": "summarize",
        "rationale": "Both parties describe the same transfer; the bank has not credited it yet.",
        "flags": [],
    }
).decode()
SUMMARY_TASK: Final = "Summarise this Mostro dispute"
CLASSIFY_TASK: Final = "Classify this Mostro dispute"
DISPUTE_FIELD: Final = re.compile(r"^dispute_id: (\S+)$", re.MULTILINE)
# What the summary DM's first line starts with; the dispute id follows.
SUMMARY_HEADLINE: Final = "Dispute "
ANSWERS: Final = {
    "buyer": "I sent the fiat at 10:05 with the order reference; my bank shows it as completed.",
    "seller": "Nothing has reached my account yet, but the details the buyer used are right.",
}


def summary_answer(dispute_id: str) -> str:
    return f"{SUMMARY_HEADLINE}{dispute_id}: {SUMMARY_ANSWER}"


def model_reply(request: RecordedRequest, delay: float) -> Reply:
    """The scripted model's answer to one call (see the module docstring)."""
    prompt = str(request.json()["messages"][-1]["content"])
    if SUMMARY_TASK in prompt:
        match = DISPUTE_FIELD.search(prompt)
        return openai_reply(summary_answer(match.group(1) if match else "?"), delay=delay)
    if CLASSIFY_TASK in prompt:
        both = "] buyer: " in prompt and "] seller: " in prompt
        return openai_reply(SUMMARIZE_ANSWER if both else ASK_ANSWER, delay=delay)
    return openai_reply("ok", delay=delay)  # the bring-up health check


def model_role(delay: str) -> None:
    """The scripted model as its own process: prints its URL, serves until stdin closes."""
    seconds = float(delay)
    trio.run(serve_model, lambda request: model_reply(request, seconds))


class Party(msgspec.Struct, frozen=True):
    dispute_id: str
    role: str
    trade_secret: str
    shared_secret: str
    shared_pubkey: str


class ChatCrowd(ThreadedSdkPeer):
    """Every party of many sessions on one relay connection: each answers Serbero's first
    message once, after a delay drawn from [0, `answer_within`] s, and reports when it sent
    the answer (`time.monotonic()`, just before the publish). Later messages are read and
    left unanswered."""

    def __init__(
        self,
        sessions: Sequence[tuple[str, str, str]],
        serbero_pubkey: str,
        relay_urls: Sequence[str],
        answer_within: float,
        on_answer: Callable[[Party, float], None],
        seed: int = 16,
    ) -> None:
        super().__init__(nostr_sdk.Keys.generate().secret_key().to_hex(), relay_urls)
        self._serbero = serbero_pubkey
        self._answer_within = answer_within
        self._on_answer = on_answer
        self._rng = random.Random(seed)
        self._parties: dict[str, Party] = {}
        self._answered: set[str] = set()
        for dispute_id, buyer, seller in sessions:
            for role, secret in (("buyer", buyer), ("seller", seller)):
                shared = nostr_sdk.Keys.parse(shared_secret_hex(secret, serbero_pubkey))
                party = Party(
                    dispute_id,
                    role,
                    secret,
                    shared.secret_key().to_hex(),
                    shared.public_key().to_hex(),
                )
                self._parties[party.shared_pubkey] = party

    async def _on_connected(self, client: nostr_sdk.Client) -> None:
        pubkeys = [nostr_sdk.PublicKey.parse(pk) for pk in self._parties]
        await self._subscribe(
            nostr_sdk.Filter().kind(nostr_sdk.Kind(CHAT_WRAP_KIND)).pubkeys(pubkeys)
        )

    async def _on_event(self, event: nostr_sdk.Event) -> None:
        tags = [tag.to_vec() for tag in event.tags()]
        party = next(
            (self._parties[t[1]] for t in tags if t[0] == "p" and t[1] in self._parties), None
        )
        if party is None or party.shared_pubkey in self._answered:
            return
        shared = nostr_sdk.Keys.parse(party.shared_secret)
        inner = nostr_sdk.Event.from_json(
            nostr_sdk.nip44_decrypt(shared.secret_key(), event.author(), event.content())
        )
        if not inner.verify() or inner.author().to_hex() != self._serbero:
            return  # our own answers come back on the same filter
        self._answered.add(party.shared_pubkey)
        self._spawn(self._answer(party, self._rng.uniform(0, self._answer_within)))

    async def _answer(self, party: Party, delay: float) -> None:
        await asyncio.sleep(delay)
        wrap = chat_wrap(party.shared_pubkey, signed_note(party.trade_secret, ANSWERS[party.role]))
        sent = time.monotonic()
        await self._publish(wrap)
        self._on_answer(party, sent)


def parties_role(relay_url: str, serbero_pubkey: str, answer_within: str, path: str) -> None:
    """Reads the sessions from the JSON file `path`, `[[dispute_id, buyer_secret,
    seller_secret], ...]`, starts the crowd, prints `ready`, then `["answered", dispute_id,
    role, monotonic]` per answer until stdin closes."""
    with open(path) as file:
        sessions = [(str(d), str(b), str(s)) for d, b, s in json.load(file)]
    lock = threading.Lock()

    def emit(party: Party, sent: float) -> None:
        with lock:
            sys.stdout.write(json.dumps(["answered", party.dispute_id, party.role, sent]) + "\n")
            sys.stdout.flush()

    crowd = ChatCrowd(sessions, serbero_pubkey, [relay_url], float(answer_within), emit)
    crowd.start()
    print("ready", flush=True)
    sys.stdin.read()
    errors = crowd.errors()
    crowd.close()
    if errors:
        print(json.dumps(["errors", errors[:5]]), flush=True)
