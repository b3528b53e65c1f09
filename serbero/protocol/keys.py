"""secp256k1 keys for Nostr: parsing (hex, NIP-19), raw ECDH and BIP-340 Schnorr.

Everything here is pure: randomness is injected (PROTO-1) and nothing touches I/O. Public keys
are validated with ``lift_x`` at parse time (PROTO-3), so a bad key fails when the config loads
rather than at first use.

Signing and ECDH call libsecp256k1 through coincurve's cffi binding directly: a `Keys` keeps
its BIP-340 keypair, so a signature costs one signing operation. coincurve's
`PrivateKey.sign_schnorr` would derive the keypair twice and verify its own signature on
every call, about three times the work; every event we sign is verified by the relays that
take it, and a relay's refusal is never counted as sent (BEY-1).
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final

from coincurve import PublicKeyXOnly
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

__all__ = [
    "CURVE_ORDER",
    "KeyFormatError",
    "Keys",
    "encode_npub",
    "encode_nsec",
    "normalise_public_key",
    "parse_public_key",
    "parse_secret_key",
    "shared_x",
    "verify_schnorr",
]

CURVE_ORDER: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")
_NOSTR_URI_PREFIX: Final = "nostr:"
# Parsed x-only keys are public data; caching them saves the lift_x on every verify from the
# same author (Mostro, relays' regulars). Bounded so a flood of fresh keys cannot grow memory.
_XONLY_CACHE_SIZE: Final = 4096
# coincurve's process-wide context (randomized at import against side channels); libsecp256k1
# contexts are safe to share between threads for signing, verifying and ECDH.
_CTX: Final = GLOBAL_CONTEXT.ctx
_COMPRESSED_LEN: Final = 33

_BECH32_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_REVERSE: Final = {c: i for i, c in enumerate(_BECH32_CHARSET)}
_BECH32_GENERATORS: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_BECH32_MAX_LEN: Final = 90


class KeyFormatError(ValueError):
    """A key string or key bytes that are not a valid secp256k1 key."""


# --- NIP-19 bech32 (BIP-173, not bech32m) -------------------------------------------------


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_BECH32_GENERATORS):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: list[int] | bytes, from_bits: int, to_bits: int, *, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise KeyFormatError("bech32: non-zero or excess padding")
    return out


def _bech32_encode(hrp: str, payload: bytes) -> str:
    data = _convert_bits(payload, 8, 5, pad=True)
    polymod = _bech32_polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[d] for d in data + checksum)


def _bech32_decode(text: str, expected_hrp: str) -> bytes:
    if len(text) > _BECH32_MAX_LEN or not text.isascii():
        raise KeyFormatError("bech32: too long or non-ASCII")
    if text.lower() != text and text.upper() != text:
        raise KeyFormatError("bech32: mixed case")
    text = text.lower()
    sep = text.rfind("1")
    hrp, rest = text[:sep], text[sep + 1 :]
    if sep < 1 or hrp != expected_hrp or len(rest) < 6:
        raise KeyFormatError(f"bech32: expected a {expected_hrp}1… string")
    try:
        data = [_BECH32_REVERSE[c] for c in rest]
    except KeyError:
        raise KeyFormatError("bech32: invalid character") from None
    if _bech32_polymod([*_hrp_expand(hrp), *data]) != 1:
        raise KeyFormatError("bech32: bad checksum")
    payload = bytes(_convert_bits(data[:-6], 5, 8, pad=False))
    if len(payload) != 32:
        raise KeyFormatError("bech32: payload is not 32 bytes")
    return payload


# --- parsing ------------------------------------------------------------------------------


def _is_hex64(text: str) -> bool:
    # A compiled pattern: this runs for every key of every event verified or wrapped.
    return len(text) == 64 and _HEX64.fullmatch(text) is not None


def _check_secret(sk: bytes) -> bytes:
    if len(sk) != 32 or not 0 < int.from_bytes(sk, "big") < CURVE_ORDER:
        raise KeyFormatError("secret key must be 32 bytes in [1, n-1]")
    return sk


@lru_cache(maxsize=_XONLY_CACHE_SIZE)
def _xonly(pk_hex: str) -> PublicKeyXOnly:
    """Lift a 64-hex x-only key (lowercase); raises ValueError when x is not on the curve."""
    return PublicKeyXOnly(bytes.fromhex(pk_hex))


def parse_secret_key(text: str) -> bytes:
    """Parse a secret key given as 64 hex characters (either case) or NIP-19 ``nsec1…``."""
    if not isinstance(text, str):
        raise KeyFormatError("secret key must be a string")
    text = text.strip()
    if _is_hex64(text):
        return _check_secret(bytes.fromhex(text))
    if text[:5].lower() == "nsec1":
        return _check_secret(_bech32_decode(text, "nsec"))
    raise KeyFormatError("secret key must be 64 hex characters or nsec1…")


def parse_public_key(text: str) -> str:
    """Parse hex / ``npub1…`` / ``nostr:npub1…`` into lowercase hex of a liftable x-only key."""
    if not isinstance(text, str):
        raise KeyFormatError("public key must be a string")
    text = text.strip()
    if text[: len(_NOSTR_URI_PREFIX)].lower() == _NOSTR_URI_PREFIX:
        text = text[len(_NOSTR_URI_PREFIX) :]
    if _is_hex64(text):
        pk_hex = text.lower()
    elif text[:5].lower() == "npub1":
        pk_hex = _bech32_decode(text, "npub").hex()
    else:
        raise KeyFormatError("public key must be 64 hex characters, npub1… or nostr:npub1…")
    try:
        _xonly(pk_hex)
    except ValueError:
        raise KeyFormatError("public key is not a point on secp256k1 (lift_x failed)") from None
    return pk_hex


def normalise_public_key(text: str) -> str:
    """A solver key as Serbero stores it: lowercase hex when `text` parses (BEY-12), else the
    text unchanged (an unusable key is recorded as written, core AS-3)."""
    try:
        return parse_public_key(text)
    except KeyFormatError:
        return text


def encode_npub(pk_hex: str) -> str:
    """NIP-19 ``npub1…`` for a validated public key."""
    return _bech32_encode("npub", bytes.fromhex(parse_public_key(pk_hex)))


def encode_nsec(sk: bytes) -> str:
    """NIP-19 ``nsec1…`` for a secret key."""
    return _bech32_encode("nsec", _check_secret(sk))


# --- ECDH and Schnorr ---------------------------------------------------------------------


def shared_x(sk: bytes, pk_hex: str) -> bytes:
    """PROTO-4: x-coordinate of ``sk·lift_x(P)``, unhashed (libsecp256k1's ecdh() would hash it)."""
    _check_secret(sk)
    if not isinstance(pk_hex, str) or not _is_hex64(pk_hex):
        raise KeyFormatError("public key must be 64 hex characters")
    point = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(
        _CTX, point, b"\x02" + bytes.fromhex(pk_hex), _COMPRESSED_LEN
    ):
        raise KeyFormatError("public key is not a point on secp256k1 (lift_x failed)")
    if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, point, sk):
        raise KeyFormatError("secret key must be 32 bytes in [1, n-1]")
    out = ffi.new("unsigned char[33]")
    out_len = ffi.new("size_t *", _COMPRESSED_LEN)
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, out_len, point, lib.SECP256K1_EC_COMPRESSED)
    return bytes(ffi.buffer(out, _COMPRESSED_LEN))[1:]


def verify_schnorr(pk_hex: str, msg32: bytes, sig: bytes) -> bool:
    """BIP-340 verification; any malformed input (bad key, wrong lengths) is simply False."""
    if len(msg32) != 32 or len(sig) != 64 or not _is_hex64(pk_hex):
        return False
    try:
        key = _xonly(pk_hex.lower())
    except ValueError:
        return False
    return bool(key.verify(sig, msg32))


class Keys:
    """An immutable secp256k1 key pair; the secret never appears in ``repr``."""

    __slots__ = ("_keypair", "public_hex", "secret")

    secret: bytes
    public_hex: str
    _keypair: Any

    def __init__(self, secret: bytes) -> None:
        _check_secret(secret)
        keypair = ffi.new("secp256k1_keypair *")
        if not lib.secp256k1_keypair_create(_CTX, keypair, secret):
            raise KeyFormatError("secret key must be 32 bytes in [1, n-1]")
        xonly = ffi.new("secp256k1_xonly_pubkey *")
        lib.secp256k1_keypair_xonly_pub(_CTX, xonly, ffi.NULL, keypair)
        out = ffi.new("unsigned char[32]")
        lib.secp256k1_xonly_pubkey_serialize(_CTX, out, xonly)
        object.__setattr__(self, "secret", secret)
        object.__setattr__(self, "_keypair", keypair)
        object.__setattr__(self, "public_hex", bytes(ffi.buffer(out, 32)).hex())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Keys is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Keys is immutable")

    def __repr__(self) -> str:
        return f"Keys(public_hex={self.public_hex!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keys) and hmac.compare_digest(other.secret, self.secret)

    def __hash__(self) -> int:
        return hash(self.public_hex)

    @classmethod
    def from_secret(cls, sk: bytes) -> Keys:
        return cls(bytes(sk))

    @classmethod
    def parse(cls, text: str) -> Keys:
        """From 64 hex characters or ``nsec1…``."""
        return cls(parse_secret_key(text))

    @classmethod
    def generate(cls, rand: Callable[[int], bytes] = os.urandom) -> Keys:
        """Fresh key pair; out-of-range draws are redrawn, so the scalar is uniform."""
        while True:
            candidate = rand(32)
            if len(candidate) == 32 and 0 < int.from_bytes(candidate, "big") < CURVE_ORDER:
                return cls(candidate)

    def sign_schnorr(self, msg32: bytes, aux_rand: bytes | None = None) -> bytes:
        """BIP-340 signature over a 32-byte message; ``aux_rand`` defaults to 32 fresh bytes."""
        if len(msg32) != 32:
            raise ValueError("BIP-340 signs 32-byte messages only")
        aux = os.urandom(32) if aux_rand is None else aux_rand
        if len(aux) != 32:
            raise ValueError("aux_rand must be 32 bytes")
        signature = ffi.new("unsigned char[64]")
        if not lib.secp256k1_schnorrsig_sign32(_CTX, signature, msg32, self._keypair, aux):
            raise ValueError("BIP-340 signing failed")
        return bytes(ffi.buffer(signature, 64))

    verify_schnorr = staticmethod(verify_schnorr)
