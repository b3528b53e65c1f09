"""Reproducible gift wraps: a DM sent again is the very same event (BEY-26).

A DM is sent again after a crash between its publish and its bookkeeping, and after every
relay refused it. Were its wrap built afresh, a relay that did store the first one would
store a second event and the solver would see the DM twice. So every random input of a
DM's gift wrap (the one-time key, both NIP-44 nonces, both back-dated timestamps, the
signatures' auxiliary randomness) is derived with HMAC-SHA256, under a key made from our
secret key and the database's salt, from the DM's identity (`DmIdentity`), each input under
its own label. Re-sending the same DM builds the same bytes and the same event id; relays
and clients drop it as a duplicate.

Without our secret the derived values are indistinguishable from random, so wraps stay as
unlinkable as drawn ones (NIP-59): one-time keys never repeat across DMs, and the
timestamps are spread over the whole two-day window. The salt, drawn once per database,
keeps a fresh database (whose outbox ids start at 1 again) from re-using the one-time keys
of an earlier one.

The one-time key of an outbox DM depends on its outbox id only, so it can be made before
the row exists (`SeededWrapper.prepare`: the keys for the next outbox ids, made while the
sender is idle). Everything else also binds the receiver, the rumor's time and the text:
two different DMs never share a nonce, even under a re-used identity.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, Literal

import msgspec

from serbero.protocol import nip44
from serbero.protocol.event import Event, tweaked_timestamp
from serbero.protocol.keys import Keys, parse_public_key
from serbero.protocol.nip59 import OneTimeKey, WrapInputs, build_private_dm

__all__ = [
    "DmIdentity",
    "SeededWrapper",
    "derive_one_time_keys",
    "derive_wrap_inputs",
    "seed_key",
]

_DOMAIN: Final = b"serbero/gift-wrap-seed/v1"
_NONCE_LEN: Final = 32
_AUX_LEN: Final = 32
# The seal's conversation keys (one per receiver, 32 bytes each); least recently used out.
SEAL_KEY_CACHE_SIZE: Final = 1024

Scope = Literal["outbox", "handoff"]


class DmIdentity(msgspec.Struct, frozen=True):
    """What makes a DM the same DM each time it is sent.

    `scope` `outbox`: the outbox row `number`. `handoff`: the escalation handoff `number`
    (one DM per receiver; its first attempt and any outbox retry of it share the identity).
    `created_at` is the rumor's time, fixed with the identity so the rumor is the same too.
    """

    scope: Scope
    number: int
    created_at: int


def seed_key(secret: bytes, salt: bytes) -> bytes:
    """The derivation key: only the holder of `secret` can compute it."""
    return hmac.new(secret, _DOMAIN + salt, hashlib.sha256).digest()


def _encode(*parts: bytes) -> bytes:
    """Length-prefixed concatenation, so no two part lists encode alike."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _stream(seed: bytes, label: bytes, binding: bytes) -> Callable[[int], bytes]:
    """A deterministic `rand`: HMAC-SHA256(seed, label || binding || counter) blocks."""
    base = hmac.new(seed, _encode(label, binding), hashlib.sha256)
    counter = 0
    buffer = b""

    def draw(count: int) -> bytes:
        nonlocal counter, buffer
        while len(buffer) < count:
            block = base.copy()
            block.update(counter.to_bytes(4, "big"))
            buffer += block.digest()
            counter += 1
        out, buffer = buffer[:count], buffer[count:]
        return out

    return draw


def _key_binding(scope: Scope, number: int, receiver: str) -> bytes:
    """An outbox DM's one-time key binds its row only (it is made before the row exists);
    a handoff has one DM per receiver, so there the receiver is bound too."""
    parts = [scope.encode(), str(number).encode()]
    if scope == "handoff":
        parts.append(receiver.encode())
    return _encode(*parts)


def _one_time_keys(seed: bytes, binding: bytes) -> Keys:
    return Keys.generate(_stream(seed, b"one-time-key", binding))


def derive_one_time_keys(seed: bytes, dm: DmIdentity, receiver: str) -> Keys:
    """The wrap's one-time key pair (`receiver`: parsed, lowercase hex)."""
    return _one_time_keys(seed, _key_binding(dm.scope, dm.number, receiver))


def derive_wrap_inputs(seed: bytes, dm: DmIdentity, receiver: str, text: str) -> WrapInputs:
    """Nonces, timestamps and signature randomness of the DM `text` to `receiver`; the
    one-time key is left to `derive_one_time_keys`. The timestamps lie up to two days
    before the rumor's, uniformly spread (PROTO-5). One stream serves every input, each
    taking the next bytes of it: one keyed hash of the text per DM."""
    draw = _stream(
        seed,
        b"wrap-inputs",
        _encode(
            _key_binding(dm.scope, dm.number, receiver),
            receiver.encode(),
            str(dm.created_at).encode(),
            text.encode(),
        ),
    )
    return WrapInputs(
        seal_nonce=draw(_NONCE_LEN),
        wrap_nonce=draw(_NONCE_LEN),
        aux_rand=draw(_AUX_LEN),
        seal_created_at=tweaked_timestamp(dm.created_at, draw),
        wrap_created_at=tweaked_timestamp(dm.created_at, draw),
    )


class _Prepared:
    """An outbox id's one-time key and its conversation keys with the likely receivers."""

    __slots__ = ("conversation", "keys")

    def __init__(self, keys: Keys, conversation: dict[str, bytes]) -> None:
        self.keys = keys
        self.conversation = conversation


class SeededWrapper:
    """NIP-17 DMs from `sender` with derived inputs, and the key work done ahead.

    The seal's conversation key (our secret with the receiver's key) is kept per receiver
    (bounded LRU). `prepare` makes an outbox id's one-time key and its conversation keys
    with the given receivers before the DM exists; the DM then only encrypts and signs.
    """

    def __init__(
        self, sender: Keys, salt: bytes, *, seal_cache_size: int = SEAL_KEY_CACHE_SIZE
    ) -> None:
        self.sender = sender
        self._seed = seed_key(sender.secret, salt)
        # Ascending ids, mostly: keys are made for the ids after the highest one seen.
        self._prepared: OrderedDict[int, _Prepared] = OrderedDict()
        self._seal_keys: OrderedDict[str, bytes] = OrderedDict()
        self._seal_cache_size = max(1, seal_cache_size)

    def prepared_ids(self) -> list[int]:
        """Outbox ids whose keys are ready, ascending."""
        return sorted(self._prepared)

    def prepare(self, outbox_id: int, receivers: Iterable[str]) -> None:
        """Make outbox row `outbox_id`'s one-time key and its conversation keys with
        `receivers` (parsed keys), the row's receiver among them if the caller guessed it.
        Asked again for the same row, the key is kept and the conversation keys replaced."""
        prepared = self._prepared.get(outbox_id)
        keys = (
            prepared.keys
            if prepared is not None
            else _one_time_keys(self._seed, _key_binding("outbox", outbox_id, ""))
        )
        conversation = {}
        for receiver in receivers:
            self.seal_key(receiver)
            conversation[receiver] = nip44.conversation_key(keys.secret, receiver)
        self._prepared[outbox_id] = _Prepared(keys, conversation)

    def forget_below(self, outbox_id: int) -> None:
        """Drop prepared keys of rows before `outbox_id` (never sent: abandoned, say), from
        the oldest made on; a key made out of order waits until those before it go."""
        while self._prepared:
            oldest = next(iter(self._prepared))
            if oldest >= outbox_id:
                return
            del self._prepared[oldest]

    def seal_key(self, receiver: str) -> bytes:
        """The sender->`receiver` conversation key (a parsed, lowercase-hex key)."""
        key = self._seal_keys.get(receiver)
        if key is None:
            key = nip44.conversation_key(self.sender.secret, receiver)
            self._seal_keys[receiver] = key
            if len(self._seal_keys) > self._seal_cache_size:
                self._seal_keys.popitem(last=False)
        else:
            self._seal_keys.move_to_end(receiver)
        return key

    def private_dm(self, receiver_pk: str, text: str, dm: DmIdentity) -> Event:
        """The DM `dm`'s wrap, the same bytes each time; raises what `build_private_dm` does."""
        receiver = parse_public_key(receiver_pk)
        pinned = derive_wrap_inputs(self._seed, dm, receiver, text)
        prepared = self._prepared.pop(dm.number, None) if dm.scope == "outbox" else None
        one_time = None
        if prepared is not None and receiver in prepared.conversation:
            one_time = OneTimeKey(prepared.keys, receiver, prepared.conversation[receiver])
        else:
            keys = (
                prepared.keys
                if prepared is not None
                else derive_one_time_keys(self._seed, dm, receiver)
            )
            pinned = msgspec.structs.replace(pinned, ephemeral=keys)
        return build_private_dm(
            self.sender,
            receiver,
            text,
            now=dm.created_at,
            pinned=pinned,
            seal_key=self.seal_key(receiver),
            one_time=one_time,
        )
