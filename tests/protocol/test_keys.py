"""Keys: parsing (PROTO-2/3), raw ECDH (PROTO-4), BIP-340 vectors (PROTO-65)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serbero.protocol.keys import (
    CURVE_ORDER,
    KeyFormatError,
    Keys,
    encode_npub,
    encode_nsec,
    parse_public_key,
    parse_secret_key,
    shared_x,
    verify_schnorr,
)
from tests.protocol import vector_files

# NIP-19 reference pair from the NIP text.
NIP19_PK = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e"
NIP19_NPUB = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg"
NIP19_SK = "67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa"
NIP19_NSEC = "nsec1vl029mgpspedva04g90vltkh6fvh240zqtv9k0t9af8935ke9laqsnlfe5"


BIP340_ROWS = vector_files.bip340_rows()
SIGNING_ROWS = [r for r in BIP340_ROWS if r["secret key"]]


@pytest.mark.parametrize("bip340_row", BIP340_ROWS, ids=[r["index"] for r in BIP340_ROWS])
def test_bip340_verify(bip340_row: dict[str, str]) -> None:
    expected = bip340_row["verification result"] == "TRUE"
    ok = verify_schnorr(
        bip340_row["public key"].lower(),
        bytes.fromhex(bip340_row["message"]),
        bytes.fromhex(bip340_row["signature"]),
    )
    assert ok is expected


@pytest.mark.parametrize("signing_row", SIGNING_ROWS, ids=[r["index"] for r in SIGNING_ROWS])
def test_bip340_sign(signing_row: dict[str, str]) -> None:
    keys = Keys.from_secret(bytes.fromhex(signing_row["secret key"]))
    assert keys.public_hex == signing_row["public key"].lower()
    sig = keys.sign_schnorr(
        bytes.fromhex(signing_row["message"]), bytes.fromhex(signing_row["aux_rand"])
    )
    assert sig.hex() == signing_row["signature"].lower()


def test_all_fifteen_rows_and_signing_rows_zero_to_three_present() -> None:
    assert len(BIP340_ROWS) == 15
    assert [r["index"] for r in SIGNING_ROWS] == ["0", "1", "2", "3"]


def test_derived_vector_keys(vectors_dir: Path) -> None:
    data = json.loads((vectors_dir / "serbero-protocol.derived.vectors.json").read_text())
    for entry in data["keys"].values():
        keys = Keys.parse(entry["secret"])
        assert keys.public_hex == entry["pubkey"]
        assert parse_public_key(entry["pubkey"]) == entry["pubkey"]


def test_nip19_round_trip() -> None:
    assert parse_public_key(NIP19_NPUB) == NIP19_PK
    assert parse_public_key("nostr:" + NIP19_NPUB) == NIP19_PK
    assert parse_public_key(NIP19_NPUB.upper()) == NIP19_PK
    assert parse_public_key(NIP19_PK.upper()) == NIP19_PK
    assert encode_npub(NIP19_PK) == NIP19_NPUB
    assert parse_secret_key(NIP19_NSEC).hex() == NIP19_SK
    assert parse_secret_key(NIP19_SK.upper()).hex() == NIP19_SK
    assert encode_nsec(bytes.fromhex(NIP19_SK)) == NIP19_NSEC
    assert Keys.parse(NIP19_NSEC).public_hex == NIP19_PK


@pytest.mark.parametrize(
    "text",
    [
        "",
        "00" * 32,  # zero
        f"{CURVE_ORDER:064x}",  # n
        f"{CURVE_ORDER + 1:064x}",
        "ff" * 32,
        "zz" * 32,
        "11" * 31,
        NIP19_NPUB,  # wrong hrp
        NIP19_NSEC[:-1] + ("q" if NIP19_NSEC[-1] != "q" else "p"),  # bad checksum
        NIP19_NSEC[:10] + NIP19_NSEC[10:].upper(),  # mixed case
        "nostr:" + NIP19_NSEC,
    ],
)
def test_parse_secret_key_rejects(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_secret_key(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ff" * 32,  # x >= p
        "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",  # no sqrt
        "00" * 32,  # not on curve
        "eb1f7200aecaa86682376fb1c13cd12b732221e774f553b0a0857f88fa20f86d",  # twist point
        NIP19_NSEC,
        NIP19_NPUB[:-1] + ("q" if NIP19_NPUB[-1] != "q" else "p"),
        "npub1",
        NIP19_PK + "00",
        "nostr:nostr:" + NIP19_NPUB,
    ],
)
def test_parse_public_key_rejects(text: str) -> None:
    with pytest.raises(KeyFormatError):
        parse_public_key(text)


def test_shared_x_is_symmetric_and_parity_free() -> None:
    a, b = Keys.parse("01" * 32), Keys.parse("02" * 32)
    assert shared_x(a.secret, b.public_hex) == shared_x(b.secret, a.public_hex)
    assert len(shared_x(a.secret, b.public_hex)) == 32


def test_shared_x_matches_mostro_docs_chat_key(vectors_dir: Path) -> None:
    # PROTO-56 vector: the chat shared secret is exactly the raw ECDH x-coordinate (PROTO-4).
    c = json.loads((vectors_dir / "serbero-protocol.derived.vectors.json").read_text())[
        "chat_shared_key_mostro_docs"
    ]
    secret = shared_x(bytes.fromhex(c["a_secret"]), c["b_pubkey"])
    assert secret.hex() == c["shared_secret"]
    assert Keys.from_secret(secret).public_hex == c["shared_pubkey"]


@pytest.mark.parametrize(
    ("sk", "pk"),
    [
        (bytes(32), NIP19_PK),
        (CURVE_ORDER.to_bytes(32, "big"), NIP19_PK),
        (b"\x01" * 31, NIP19_PK),
        (b"\x01" * 32, "ff" * 32),
        (b"\x01" * 32, "xyz"),
    ],
)
def test_shared_x_rejects(sk: bytes, pk: str) -> None:
    with pytest.raises(KeyFormatError):
        shared_x(sk, pk)


def test_keys_immutable_and_secret_not_in_repr() -> None:
    keys = Keys.parse(NIP19_SK)
    assert NIP19_SK not in repr(keys)
    assert NIP19_PK in repr(keys)
    with pytest.raises(AttributeError):
        keys.secret = b"\x01" * 32  # type: ignore[misc]
    assert keys == Keys.from_secret(bytes.fromhex(NIP19_SK))


def test_generate_redraws_out_of_range_scalars() -> None:
    draws = iter([bytes(32), b"\xff" * 32, b"\x07" * 32])
    keys = Keys.generate(lambda n: next(draws))
    assert keys.secret == b"\x07" * 32


def test_sign_uses_fresh_aux_and_verifies() -> None:
    keys = Keys.generate()
    msg = bytes(range(32))
    s1, s2 = keys.sign_schnorr(msg), keys.sign_schnorr(msg)
    assert s1 != s2  # fresh aux_rand each time
    assert verify_schnorr(keys.public_hex, msg, s1)
    assert not verify_schnorr(keys.public_hex, bytes(32), s1)
    assert not verify_schnorr(keys.public_hex, msg, s1[:63])
    assert not verify_schnorr("ff" * 32, msg, s1)
    with pytest.raises(ValueError):
        keys.sign_schnorr(b"short")
