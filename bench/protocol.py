"""Protocol hot paths: event verify, NIP-17 gift-wrap build and unwrap, next to nostr-sdk.

Plain script: ``python -m bench.protocol``. Each figure is the best of several rounds of the
mean time per call, in microseconds, so a noisy neighbour on a small box inflates nothing.
"""

from __future__ import annotations

import nostr_sdk

from bench.timing import CALLS_PER_ROUND, ROUNDS, per_call_us
from serbero.protocol.event import decode_event, encode_event, sign_event, verify_event
from serbero.protocol.keys import Keys
from serbero.protocol.nip59 import build_private_dm, unwrap_gift

TARGET_VERIFY_US = 100.0
TARGET_BUILD_US = 600.0
NOW = 1_700_000_000
TEXT = (
    "New Mostro dispute requires attention.\n"
    "dispute_id: 1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11\n"
    "initiator: buyer\n"
    "status: initiated"
)


def row(label: str, figures: tuple[float, float], target: float | None = None) -> None:
    best, median = figures
    verdict = ""
    if target is not None:
        verdict = f"target <= {target:.0f} µs  {'OK' if best <= target else 'OVER'}"
    print(f"{label:<44} {best:>8.1f} µs  (median {median:>7.1f})  {verdict}")


def main() -> None:
    sender, receiver = Keys.generate(), Keys.generate()
    event = sign_event(
        sender,
        created_at=NOW,
        kind=38386,
        tags=[["d", "1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11"], ["s", "initiated"], ["z", "dispute"]],
        content="",
    )
    raw_event = encode_event(event)
    wrap = build_private_dm(sender, receiver.public_hex, TEXT, now=NOW)

    sdk_sender = nostr_sdk.Keys.parse(sender.secret.hex())
    sdk_receiver = nostr_sdk.Keys.parse(receiver.secret.hex())
    sdk_receiver_pk = sdk_receiver.public_key()
    sdk_wrap = nostr_sdk.Event.from_json(encode_event(wrap).decode())

    print(f"serbero protocol bench: {ROUNDS} rounds x {CALLS_PER_ROUND} calls, best (median)")
    row("event verify (id + BIP-340)", per_call_us(lambda: verify_event(event)), TARGET_VERIFY_US)
    row(
        "event decode + verify (relay pool path)",
        per_call_us(lambda: verify_event(decode_event(raw_event))),
        TARGET_VERIFY_US,
    )
    row(
        "gift-wrap build (build_private_dm)",
        per_call_us(lambda: build_private_dm(sender, receiver.public_hex, TEXT, now=NOW)),
        TARGET_BUILD_US,
    )
    row("gift-wrap unwrap (unwrap_gift)", per_call_us(lambda: unwrap_gift(receiver, wrap)))
    row(
        "nostr-sdk nip17_make_private_msg",
        per_call_us(lambda: nostr_sdk.nip17_make_private_msg(sdk_sender, sdk_receiver_pk, TEXT)),
    )
    row(
        "nostr-sdk UnwrappedGift.from_gift_wrap",
        per_call_us(lambda: nostr_sdk.UnwrappedGift.from_gift_wrap(sdk_receiver, sdk_wrap)),
    )
    row("nostr-sdk Event.verify", per_call_us(lambda: sdk_wrap.verify()))


if __name__ == "__main__":
    main()
