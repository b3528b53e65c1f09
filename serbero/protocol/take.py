"""The take-flow on the wire: asking Mostro for a dispute and reading its answer (PROTO-45..53).

Pure: the signed `admin-take-dispute` request in its gift wrap, and the per-reply decision
(keep waiting, refused, taken) as a plain function, so the actor that runs the flow only
sends, waits and records.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Final

import msgspec

from serbero.protocol.event import Event, make_rumor
from serbero.protocol.keys import Keys
from serbero.protocol.mostro import (
    MOSTRO_RUMOR_KIND,
    CantDoPayload,
    DisputePayload,
    MostroMessage,
    MostroMessageError,
    SolverDisputeInfo,
    canonical_uuid,
    encode_mostro_message,
)
from serbero.protocol.nip59 import WrapInputs, build_gift_wrap

__all__ = [
    "ADMIN_TAKE_DISPUTE",
    "ADMIN_TOOK_DISPUTE",
    "TAKE_TIMEOUT_ERROR",
    "TakeRefused",
    "TakeReplyOutcome",
    "TakeSkip",
    "TakeTook",
    "admin_take_dispute_content",
    "build_admin_take_dispute",
    "match_take_reply",
    "take_refusal_error",
]

ADMIN_TAKE_DISPUTE: Final = "admin-take-dispute"
ADMIN_TOOK_DISPUTE: Final = "admin-took-dispute"
TAKE_TIMEOUT_ERROR: Final = "timed out waiting for AdminTookDispute response from Mostro"

_AUX_LEN: Final = 32


def take_refusal_error(dispute_id: str, reason: str) -> str:
    """PROTO-53 step 3.4: the take-flow's failure text for a `cant-do`."""
    return f"Mostro refused AdminTakeDispute for dispute {dispute_id}: {reason}"


def admin_take_dispute_content(
    serbero: Keys, dispute_id: str, *, aux_rand: bytes | None = None
) -> str:
    """PROTO-45/47: the signed rumor content `[<message>,"<sig>"]` for a dispute UUID.

    Built as a literal string so element 0 is exactly the bytes that were signed.
    `aux_rand` defaults to fresh random bytes inside the signer.
    """
    uuid = canonical_uuid(dispute_id)
    if uuid is None:
        raise MostroMessageError("admin-take-dispute needs a UUID dispute id (PROTO-41)")
    message = encode_mostro_message("dispute", ADMIN_TAKE_DISPUTE, id=uuid)
    sig = serbero.sign_schnorr(hashlib.sha256(message).digest(), aux_rand).hex()
    return "[" + message.decode() + ',"' + sig + '"]'


def build_admin_take_dispute(
    serbero: Keys,
    mostro_pk: str,
    dispute_id: str,
    *,
    now: int,
    rand: Callable[[int], bytes] = os.urandom,
    pinned: WrapInputs | None = None,
) -> Event:
    """PROTO-46: the gift wrap carrying `admin-take-dispute` to Mostro.

    Rumor kind 1, no tags, `created_at` = now (Mostro drops rumors older than ~10 s); the wrap
    is addressed with `["p", mostro_pk]` and nothing else. Every random input comes from
    `rand` unless `pinned`; a pinned `aux_rand` also serves the message signature.
    """
    pinned_aux = pinned.aux_rand if pinned is not None else None
    message_aux = pinned_aux if pinned_aux is not None else rand(_AUX_LEN)
    rumor = make_rumor(
        serbero.public_hex,
        created_at=now,
        kind=MOSTRO_RUMOR_KIND,
        tags=[],
        content=admin_take_dispute_content(serbero, dispute_id, aux_rand=message_aux),
    )
    return build_gift_wrap(
        serbero,
        mostro_pk,
        rumor,
        now=now,
        rand=rand,
        pinned=pinned,
    )


class TakeSkip(msgspec.Struct, frozen=True, tag="skip"):
    """Not the reply we wait for; keep waiting (the reason is for debug logs)."""

    reason: str


class TakeRefused(msgspec.Struct, frozen=True, tag="refused"):
    """Mostro answered `cant-do` for this dispute: the take-flow fails."""

    reason: str


class TakeTook(msgspec.Struct, frozen=True, tag="took"):
    """Mostro confirmed the take; `info` carries the parties' trade keys (PROTO-54 input)."""

    info: SolverDisputeInfo


TakeReplyOutcome = TakeSkip | TakeRefused | TakeTook


def match_take_reply(msg: MostroMessage, *, mostro_pk: str, dispute_id: str) -> TakeReplyOutcome:
    """PROTO-53 steps 3.2-3.6 for one opened message; step 3.7 (chat keys) is the caller's.

    Ids are compared as UUIDs, as Mostro does, so spelling differences do not matter. Stale
    replies for other disputes are skipped; a replayed reply for this dispute is success.
    """
    if msg.sender.lower() != mostro_pk.lower():
        return TakeSkip(reason="sender is not the Mostro node")
    wanted = canonical_uuid(dispute_id)
    if wanted is None:
        return TakeSkip(reason="dispute id is not a UUID")
    if msg.id is None or canonical_uuid(msg.id) != wanted:
        return TakeSkip(reason="message is about another dispute")
    if isinstance(msg.payload, CantDoPayload):
        return TakeRefused(reason=msg.payload.reason)
    if msg.action != ADMIN_TOOK_DISPUTE:
        return TakeSkip(reason=f"action {msg.action!r} is not admin-took-dispute")
    payload = msg.payload
    if (
        not isinstance(payload, DisputePayload)
        or payload.info is None
        or canonical_uuid(payload.dispute_id) != wanted
    ):
        return TakeSkip(reason="admin-took-dispute without dispute info for this dispute")
    return TakeTook(info=payload.info)
