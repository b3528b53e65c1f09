"""Hostile, deeply nested JSON must raise each decoder's typed error, never RecursionError."""

import pytest

from serbero.protocol.event import EventError, decode_event, decode_rumor, encode_event, sign_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import FrameError, decode_relay_frame
from serbero.protocol.nip44 import conversation_key, encrypt
from serbero.protocol.nip59 import Malformed, NotForMe, unwrap_gift

DEPTH = 5000
NESTED = "[" * DEPTH + "]" * DEPTH


@pytest.mark.parametrize(
    "frame", [NESTED, f'["EVENT","s",{{"x":{NESTED}}}]', f'["NOTICE",{NESTED}]']
)
def test_relay_frame_nesting_is_a_frame_error(frame: str) -> None:
    with pytest.raises(FrameError):
        decode_relay_frame(frame)


def test_event_nesting_is_an_event_error() -> None:
    with pytest.raises(EventError):
        decode_event(f'{{"x":{NESTED}}}')
    with pytest.raises(EventError):
        decode_rumor(f'{{"x":{NESTED}}}')


def test_gift_wrap_with_nested_rumor_is_malformed() -> None:
    sender, receiver, eph = Keys.generate(), Keys.generate(), Keys.generate()
    rumor_json = f'{{"x":{NESTED}}}'
    seal = sign_event(
        sender,
        created_at=1_700_000_000,
        kind=13,
        tags=[],
        content=encrypt(rumor_json, conversation_key(sender.secret, receiver.public_hex)),
    )
    wrap = sign_event(
        eph,
        created_at=1_700_000_000,
        kind=1059,
        tags=[["p", receiver.public_hex]],
        content=encrypt(
            encode_event(seal).decode(), conversation_key(eph.secret, receiver.public_hex)
        ),
    )
    with pytest.raises((Malformed, NotForMe)) as info:
        unwrap_gift(receiver, wrap)
    assert isinstance(info.value, Malformed)
