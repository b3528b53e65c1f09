"""NIP-44 v2 against every case of nip44.vectors.json (PROTO-24..30, PROTO-64)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from serbero.protocol import nip44
from serbero.protocol.keys import Keys
from tests.protocol import vector_files

V2 = vector_files.nip44()
VALID = V2["valid"]
INVALID = V2["invalid"]


def _v2(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir / "nip44.vectors.json").read_text(encoding="utf-8")
    )["v2"]
    return data


def test_vector_file_sections_all_covered(vectors_dir: Path) -> None:
    v2 = _v2(vectors_dir)
    assert sorted(v2["valid"]) == [
        "calc_padded_len",
        "encrypt_decrypt",
        "encrypt_decrypt_long_msg",
        "get_conversation_key",
        "get_message_keys",
    ]
    assert sorted(v2["invalid"]) == ["decrypt", "encrypt_msg_lengths", "get_conversation_key"]
    assert v2 == V2  # the parametrized cases below are exactly the fixture's file


@pytest.mark.parametrize("case", VALID["get_conversation_key"])
def test_conversation_key(case: dict[str, str]) -> None:
    ck = nip44.conversation_key(bytes.fromhex(case["sec1"]), case["pub2"])
    assert ck.hex() == case["conversation_key"]


@pytest.mark.parametrize("case", VALID["get_message_keys"]["keys"])
def test_message_keys(case: dict[str, str]) -> None:
    ck = bytes.fromhex(VALID["get_message_keys"]["conversation_key"])
    chacha_key, chacha_nonce, hmac_key = nip44.message_keys(ck, bytes.fromhex(case["nonce"]))
    assert chacha_key.hex() == case["chacha_key"]
    assert chacha_nonce.hex() == case["chacha_nonce"]
    assert hmac_key.hex() == case["hmac_key"]


@pytest.mark.parametrize(("length", "padded"), VALID["calc_padded_len"])
def test_calc_padded_len(length: int, padded: int) -> None:
    assert nip44.calc_padded_len(length) == padded


@pytest.mark.parametrize("case", VALID["encrypt_decrypt"])
def test_encrypt_decrypt(case: dict[str, str]) -> None:
    sec1, sec2 = bytes.fromhex(case["sec1"]), bytes.fromhex(case["sec2"])
    pub1, pub2 = Keys.from_secret(sec1).public_hex, Keys.from_secret(sec2).public_hex
    ck = nip44.conversation_key(sec1, pub2)
    assert ck.hex() == case["conversation_key"]
    assert nip44.conversation_key(sec2, pub1) == ck
    payload = nip44.encrypt(case["plaintext"], ck, bytes.fromhex(case["nonce"]))
    assert payload == case["payload"]
    assert nip44.decrypt(payload, ck) == case["plaintext"]


@pytest.mark.parametrize("case", VALID["encrypt_decrypt_long_msg"])
def test_encrypt_decrypt_long_msg(case: dict[str, Any]) -> None:
    plaintext = case["pattern"] * case["repeat"]
    assert hashlib.sha256(plaintext.encode()).hexdigest() == case["plaintext_sha256"]
    ck = bytes.fromhex(case["conversation_key"])
    payload = nip44.encrypt(plaintext, ck, bytes.fromhex(case["nonce"]))
    assert hashlib.sha256(payload.encode()).hexdigest() == case["payload_sha256"]
    assert nip44.decrypt(payload, ck) == plaintext


@pytest.mark.parametrize("length", INVALID["encrypt_msg_lengths"])
def test_invalid_plaintext_length(length: int) -> None:
    with pytest.raises(nip44.InvalidPlaintextLength):
        nip44.encrypt("a" * length, bytes(32), bytes(32))


@pytest.mark.parametrize("case", INVALID["get_conversation_key"], ids=lambda c: c["note"])
def test_invalid_conversation_key(case: dict[str, str]) -> None:
    with pytest.raises(nip44.InvalidConversationKey):
        nip44.conversation_key(bytes.fromhex(case["sec1"]), case["pub2"])


# PROTO-64: the note names the PROTO-29 step; the empty payload fails at step 1.
_NOTE_TO_ERROR: dict[str, type[nip44.Nip44Error]] = {
    "unknown encryption version": nip44.UnsupportedVersion,
    "unknown encryption version 0": nip44.UnsupportedVersion,
    "invalid base64": nip44.InvalidBase64,
    "invalid MAC": nip44.InvalidMac,
    "invalid padding": nip44.InvalidPadding,
    "invalid payload length: 0": nip44.UnsupportedVersion,
    "invalid payload length: 4": nip44.InvalidPayloadSize,
    "invalid payload length: 48": nip44.InvalidPayloadSize,
    "invalid payload length: 92": nip44.InvalidPayloadSize,
}


@pytest.mark.parametrize(
    "case", INVALID["decrypt"], ids=[f"{i}-{c['note']}" for i, c in enumerate(INVALID["decrypt"])]
)
def test_invalid_decrypt(case: dict[str, str]) -> None:
    error = _NOTE_TO_ERROR[case["note"]]
    with pytest.raises(error):
        nip44.decrypt(case["payload"], bytes.fromhex(case["conversation_key"]))


def _payload(ck: bytes) -> str:
    # 40 bytes pad to 64, so the 131-byte payload ends in one "=" (exercises the last quantum).
    return nip44.encrypt("hello" * 8, ck, bytes(range(32)))


def test_tampered_ciphertext_is_invalid_mac() -> None:
    ck = bytes(range(32))
    payload = _payload(ck)
    index = 60
    tampered = payload[:index] + ("A" if payload[index] != "A" else "B") + payload[index + 1 :]
    with pytest.raises(nip44.InvalidMac):
        nip44.decrypt(tampered, ck)
    with pytest.raises(nip44.InvalidMac):
        nip44.decrypt(payload, bytes(32))  # wrong key


def test_non_canonical_base64_rejected() -> None:
    ck = bytes(range(32))
    payload = _payload(ck)
    assert payload.endswith("=")
    pad = len(payload) - len(payload.rstrip("="))
    last = payload[-pad - 1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    bumped = alphabet[alphabet.index(last) + 1]  # sets a padding bit, same decoded bytes
    with pytest.raises(nip44.InvalidBase64):
        nip44.decrypt(payload[: -pad - 1] + bumped + "=" * pad, ck)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda p: p + "\n", nip44.InvalidBase64),
        (lambda p: " " + p[1:], nip44.InvalidBase64),
        (lambda p: p[:-1], nip44.InvalidBase64),  # drops the required padding
        (lambda p: p[:-1] + "A", nip44.InvalidMac),  # one byte more, MAC no longer fits
        (lambda p: "A" * 87473, nip44.InvalidPayloadSize),
        (lambda p: "A" * 87472, nip44.InvalidDataSize),
        (lambda p: "Aw" + p[2:], nip44.UnsupportedVersion),
    ],
)
def test_decrypt_step_errors(mutate: Any, error: type[nip44.Nip44Error]) -> None:
    ck = bytes(range(32))
    with pytest.raises(error):
        nip44.decrypt(mutate(_payload(ck)), ck)


def test_invalid_utf8_after_valid_mac() -> None:
    ck = bytes(range(32))
    nonce = bytes(32)
    payload = nip44.encrypt_bytes(b"\xff\xfe", ck, nonce)
    with pytest.raises(nip44.InvalidUtf8):
        nip44.decrypt(payload, ck)
    with pytest.raises(nip44.InvalidUtf8):
        nip44.encrypt("\ud800", ck, nonce)


def test_bad_key_and_nonce_lengths() -> None:
    with pytest.raises(nip44.InvalidConversationKey):
        nip44.encrypt("x", bytes(31))
    with pytest.raises(nip44.Nip44Error):
        nip44.encrypt("x", bytes(32), bytes(16))


def test_encrypt_bytes_matches_encrypt_and_random_nonce() -> None:
    ck = bytes(range(32))
    assert nip44.encrypt_bytes("héllo".encode(), ck, bytes(32)) == nip44.encrypt(
        "héllo", ck, bytes(32)
    )
    assert nip44.encrypt("x", ck) != nip44.encrypt("x", ck)
    assert nip44.decrypt(nip44.encrypt("x" * 65535, ck), ck) == "x" * 65535
