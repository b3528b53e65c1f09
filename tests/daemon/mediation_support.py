"""Shared parts of the daemon-level mediation tests: the scripted model, the harness with a
Mostro that answers takes, the parties, the steps every session test waits for, and
database probes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coincurve

from tests.daemon.process import DaemonProcess, write_config
from tests.daemon.support import Harness, eventually, in_thread, query
from tests.reasoning.helpers import ASK_ANSWER
from tests.support.chat_party import ChatParty, shared_secret_hex
from tests.support.mostro_sim import MostroSim
from tests.support.scripted_llm import RecordedRequest, Reply, json_reply, openai_reply

WAIT = 20.0
# The model's reading once the parties' answers settle the dispute: a summary for the solvers.
SUMMARIZE_VERDICT = (
    '{"classification":"coordination_failure_resolvable","confidence":0.9,'
    '"suggested_action":"summarize","rationale":"the fiat was only late","flags":[]}'
)
# What the solvers read for `tests.reasoning.helpers.SUMMARY_ANSWER`.
SUMMARY_DM = "The buyer paid late.\n\nSuggested next step: confirm receipt"


class Model:
    """Answers the health check with text and each classify call by the dispute it names
    (ASK_ANSWER unless told otherwise); `unhealthy` turns every call into a 503."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.unhealthy = False
        self.classified: list[str] = []

    def __call__(self, request: RecordedRequest) -> Reply:
        if self.unhealthy:
            return json_reply({"error": "overloaded"}, status=503)
        prompt = json.dumps(request.json()["messages"])
        if '"ping"' in prompt and "dispute_id" not in prompt:
            return openai_reply("pong")
        for dispute_id, answer in self.answers.items():
            if dispute_id in prompt:
                self.classified.append(dispute_id)
                return openai_reply(answer)
        self.classified.append(prompt)
        return openai_reply(ASK_ANSWER)


def mediation_harness(
    relay_url: str,
    db_path: str,
    *,
    mostro_relay: str | None = None,
    outsider: bool = False,
    valid_solvers: int = 2,
) -> Harness:
    """The daemon harness with a Mostro that answers `admin-take-dispute` like Mostro does
    (on `mostro_relay` when given); `outsider`: Serbero's key is not one of its solvers."""
    h = Harness(relay_url, db_path, valid_solvers=valid_solvers)
    solvers = [h.solver_keys[0].public_hex] if outsider else None
    h.sim = MostroSim(
        h.mostro.secret.hex(), [mostro_relay or relay_url], answer_takes=True, solvers=solvers
    )
    return h


@asynccontextmanager
async def parties(
    mostro: MostroSim, dispute_id: str, serbero_hex: str, relay_url: str
) -> AsyncIterator[tuple[ChatParty, ChatParty]]:
    buyer_secret, seller_secret = mostro.trade_keys(dispute_id)
    buyer = ChatParty(buyer_secret, serbero_hex, [relay_url])
    seller = ChatParty(seller_secret, serbero_hex, [relay_url])
    await in_thread(buyer.start)
    await in_thread(seller.start)
    try:
        yield buyer, seller
    finally:
        await in_thread(buyer.close)
        await in_thread(seller.close)


async def opening_received(
    daemon: DaemonProcess, mostro: MostroSim, dispute_id: str, buyer: ChatParty, seller: ChatParty
) -> None:
    """The subprocess daemon's engine is up, then `opening_read`."""
    await in_thread(daemon.wait_for_event, "mediation_engine_started", WAIT)
    await opening_read(mostro, dispute_id, buyer, seller)


async def opening_read(
    mostro: MostroSim, dispute_id: str, buyer: ChatParty, seller: ChatParty
) -> None:
    """The buyer opens the dispute and each party holds Serbero's opening message."""
    await in_thread(mostro.open_dispute, dispute_id, "buyer")
    await in_thread(buyer.wait_for_count, 1, WAIT)
    await in_thread(seller.wait_for_count, 1, WAIT)


async def summary_read_and_closed(h: Harness, db_path: str) -> None:
    """Every solver reads the summary and the session closes."""
    for dms in await h.wait_dms(1, "Suggested next step:"):
        assert dms[0].content == SUMMARY_DM
    await eventually(
        lambda: query(db_path, "SELECT state FROM mediation_sessions") == [("closed",)], WAIT
    )


def mediation_events(db_path: str, dispute_id: str) -> list[tuple[str, str | None, str]]:
    """The dispute's events, dispute-scoped and of its sessions, in id order."""
    return [
        (str(kind), session, str(payload))
        for kind, session, payload in query(
            db_path,
            "SELECT kind, session_id, payload_json FROM mediation_events WHERE session_id IN"
            " (SELECT session_id FROM mediation_sessions WHERE dispute_id = ?1)"
            " OR (session_id IS NULL AND json_extract(payload_json, '$.dispute_id') = ?1)"
            " ORDER BY id",
            (dispute_id,),
        )
    ]


def sessions(db_path: str, dispute_id: str) -> list[tuple[Any, ...]]:
    return query(
        db_path,
        "SELECT session_id, state, buyer_shared_pubkey, seller_shared_pubkey"
        " FROM mediation_sessions WHERE dispute_id = ?",
        (dispute_id,),
    )


def shared_pubkey(trade_secret_hex: str, serbero_pubkey_hex: str) -> str:
    """MAS-1: the party's shared pubkey, derived here independently of serbero."""
    secret = bytes.fromhex(shared_secret_hex(trade_secret_hex, serbero_pubkey_hex))
    return coincurve.PrivateKey(secret).public_key.format(compressed=True)[1:].hex()


def refuse_chat_of(h: Harness, dispute_id: str) -> Any:
    """A filtering-relay predicate: refuse every event addressed (`p`) to the dispute's
    parties on their chat with Serbero (their shared pubkeys)."""
    chosen = {
        shared_pubkey(secret, h.serbero.public_hex) for secret in h.sim.trade_keys(dispute_id)
    }

    def refuse(event: dict[str, Any]) -> bool:
        return any(tag[:1] == ["p"] and tag[1] in chosen for tag in event.get("tags", []))

    return refuse


def write_mediation_config(
    directory: Path,
    h: Harness,
    *,
    relay_url: str,
    llm_url: str,
    tick: int = 1,
    max_rounds: int = 2,
) -> Path:
    """`write_config` for the harness's keys and solvers plus mediation on against the
    scripted model (the API key comes from SERBERO_REASONING_API_KEY, like the private key
    from its variable)."""
    solvers = [keys.public_hex for keys in h.solver_keys]
    path = write_config(directory, mostro=h.mostro, relay_url=relay_url, solvers=solvers)
    path.write_text(
        path.read_text()
        + f"\n[mediation]\nenabled = true\nmax_rounds = {max_rounds}\n"
        + '\n[reasoning]\nenabled = true\nprovider = "openai-compatible"\n'
        + f'model = "scripted-model"\napi_base = "{llm_url}"\nrequest_timeout_seconds = 5\n'
        + "followup_retry_count = 0\n"
        + f"\n[chat]\ninbound_fetch_interval_seconds = {tick}\n"
    )
    return path
