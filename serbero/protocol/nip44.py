"""NIP-44 version 2 encryption (PROTO-24..30).

ChaCha20 comes from ``cryptography``; HMAC and HKDF are the stdlib's one-shot ``hmac.digest``.
Decryption checks run in exactly the PROTO-29 order, so every failure maps to one error class.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from serbero.protocol.keys import KeyFormatError, shared_x

__all__ = [
    "InvalidBase64",
    "InvalidConversationKey",
    "InvalidDataSize",
    "InvalidMac",
    "InvalidPadding",
    "InvalidPayloadSize",
    "InvalidPlaintextLength",
    "InvalidUtf8",
    "Nip44Error",
    "UnsupportedVersion",
    "calc_padded_len",
    "conversation_key",
    "decrypt",
    "encrypt",
    "encrypt_bytes",
    "message_keys",
]

VERSION: Final = 2
MIN_PLAINTEXT: Final = 1
MAX_PLAINTEXT: Final = 65535
MIN_PAYLOAD_CHARS: Final = 132
MAX_PAYLOAD_CHARS: Final = 87472
MIN_DATA_BYTES: Final = 99
MAX_DATA_BYTES: Final = 65603
_SALT: Final = b"nip44-v2"
_KEY_LEN: Final = 32
_MAC_LEN: Final = 32
# cryptography's ChaCha20 takes a 16-byte nonce: 4-byte little-endian counter, then RFC 8439's
# 12-byte nonce. NIP-44 starts the counter at 0.
_COUNTER_ZERO: Final = b"\x00\x00\x00\x00"


class Nip44Error(ValueError):
    """Any NIP-44 failure; callers treat every subclass as "cannot decrypt"."""


class InvalidPlaintextLength(Nip44Error):
    """Plaintext is empty or longer than 65535 UTF-8 bytes (PROTO-27)."""


class UnsupportedVersion(Nip44Error):
    """Empty payload, ``#``-prefixed payload, or a version byte other than 2."""


class InvalidPayloadSize(Nip44Error):
    """Payload shorter than 132 or longer than 87472 characters."""


class InvalidBase64(Nip44Error):
    """Payload is not strict, padded, standard Base64."""


class InvalidDataSize(Nip44Error):
    """Decoded payload shorter than 99 or longer than 65603 bytes."""


class InvalidMac(Nip44Error):
    """The HMAC does not authenticate the nonce and ciphertext."""


class InvalidPadding(Nip44Error):
    """Decrypted length prefix is inconsistent with the padded length."""


class InvalidUtf8(Nip44Error):
    """The message is not valid UTF-8 (or cannot be encoded as UTF-8)."""


class InvalidConversationKey(Nip44Error):
    """A key that cannot produce a conversation key, or a key that is not 32 bytes."""


def conversation_key(sk: bytes, pk_hex: str) -> bytes:
    """PROTO-24: HKDF-extract(salt="nip44-v2", IKM=shared_x); symmetric in the two parties."""
    try:
        shared = shared_x(sk, pk_hex)
    except KeyFormatError as exc:
        raise InvalidConversationKey(str(exc)) from None
    return hmac.digest(_SALT, shared, hashlib.sha256)


def message_keys(ck: bytes, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """PROTO-25: HKDF-expand(ck, info=nonce, L=76) split into chacha key, chacha nonce, hmac key."""
    if len(ck) != _KEY_LEN:
        raise InvalidConversationKey("conversation key must be 32 bytes")
    if len(nonce) != _KEY_LEN:
        raise Nip44Error("nonce must be 32 bytes")
    t1 = hmac.digest(ck, nonce + b"\x01", hashlib.sha256)
    t2 = hmac.digest(ck, t1 + nonce + b"\x02", hashlib.sha256)
    t3 = hmac.digest(ck, t2 + nonce + b"\x03", hashlib.sha256)
    okm = t1 + t2 + t3
    return okm[0:32], okm[32:44], okm[44:76]


def calc_padded_len(n: int) -> int:
    """PROTO-26, in integer arithmetic: powers of two above 256 pad in eighths."""
    if n <= 32:
        return 32
    next_power = 1 << (n - 1).bit_length()
    chunk = 32 if next_power <= 256 else next_power // 8
    return chunk * ((n - 1) // chunk + 1)


def _chacha20(key: bytes, nonce12: bytes, data: bytes) -> bytes:
    cipher = Cipher(algorithms.ChaCha20(key, _COUNTER_ZERO + nonce12), mode=None)
    return cipher.encryptor().update(data)


def encrypt_bytes(plaintext: bytes, ck: bytes, nonce: bytes | None = None) -> str:
    """PROTO-27/28 over already-encoded UTF-8 (saves a decode/encode round when the caller
    holds bytes, e.g. a freshly serialized event). ``nonce`` defaults to 32 CSPRNG bytes."""
    length = len(plaintext)
    if not MIN_PLAINTEXT <= length <= MAX_PLAINTEXT:
        raise InvalidPlaintextLength(f"plaintext must be 1..65535 bytes, got {length}")
    if nonce is None:
        nonce = os.urandom(_KEY_LEN)
    chacha_key, chacha_nonce, hmac_key = message_keys(ck, nonce)
    padded = length.to_bytes(2, "big") + plaintext + bytes(calc_padded_len(length) - length)
    ciphertext = _chacha20(chacha_key, chacha_nonce, padded)
    mac = hmac.digest(hmac_key, nonce + ciphertext, hashlib.sha256)
    return binascii.b2a_base64(b"\x02" + nonce + ciphertext + mac, newline=False).decode("ascii")


def encrypt(plaintext: str, ck: bytes, nonce: bytes | None = None) -> str:
    """PROTO-28: base64(0x02 ‖ nonce ‖ ChaCha20(padded) ‖ HMAC(nonce ‖ ct))."""
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidUtf8("plaintext cannot be encoded as UTF-8") from None
    return encrypt_bytes(data, ck, nonce)


def _strict_b64decode(payload: str) -> bytes:
    try:
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64("payload is not strict padded Base64") from None
    # Strict mode still accepts non-zero bits in the last, padded quantum; require the
    # canonical form so one ciphertext has exactly one encoding.
    pad = len(payload) - len(payload.rstrip("="))
    if pad and binascii.b2a_base64(data[-(3 - pad) :], newline=False) != payload[-4:].encode():
        raise InvalidBase64("payload has non-canonical Base64 padding bits")
    return data


def decrypt(payload: str, ck: bytes) -> str:
    """PROTO-29: every check in order; raises the step's Nip44Error subclass."""
    if not isinstance(payload, str):
        raise InvalidBase64("payload must be a string")
    if not payload or payload[0] == "#":
        raise UnsupportedVersion("unknown encryption version")
    if not MIN_PAYLOAD_CHARS <= len(payload) <= MAX_PAYLOAD_CHARS:
        raise InvalidPayloadSize(f"invalid payload length: {len(payload)}")
    data = _strict_b64decode(payload)
    if not MIN_DATA_BYTES <= len(data) <= MAX_DATA_BYTES:
        raise InvalidDataSize(f"invalid data length: {len(data)}")
    if data[0] != VERSION:
        raise UnsupportedVersion(f"unknown encryption version {data[0]}")
    nonce, ciphertext, mac = data[1:33], data[33:-_MAC_LEN], data[-_MAC_LEN:]
    chacha_key, chacha_nonce, hmac_key = message_keys(ck, nonce)
    expected = hmac.digest(hmac_key, nonce + ciphertext, hashlib.sha256)
    if not hmac.compare_digest(expected, mac):
        raise InvalidMac("invalid MAC")
    padded = _chacha20(chacha_key, chacha_nonce, ciphertext)
    length = int.from_bytes(padded[:2], "big")
    if length == 0 or len(padded) < 2 + length or len(padded) != 2 + calc_padded_len(length):
        raise InvalidPadding("invalid padding")
    try:
        return padded[2 : 2 + length].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidUtf8("message is not valid UTF-8") from None
