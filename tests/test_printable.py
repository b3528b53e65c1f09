"""`serbero.printable`: outside text shown escaped and clipped, never acted on (BEY-28)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.printable import (
    MAX_SHOWN,
    display_width,
    escaped,
    printable,
    printable_lines,
)

C0_WITHOUT_NUL = "".join(chr(code) for code in range(1, 0x20))
C1 = "".join(chr(code) for code in range(0x80, 0xA0))
BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def unescape(shown: str) -> str:
    """Undo `escaped`: its escapes are Python's, so the codec reads them back."""
    return shown.encode("ascii", "backslashreplace").decode("unicode_escape")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[2J\x1b[31mred\x07", "\\x1b[2J\\x1b[31mred\\x07"),
        ("tab\there\nnew\rline", "tab\\there\\nnew\\rline"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("right-to-left \u202eevil\u202c", "right-to-left \\u202eevil\\u202c"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("back\\slash", "back\\\\slash"),
        ("plain é 日本 ✓ 😀 text", "plain é 日本 ✓ 😀 text"),
    ],
)
def test_non_printable_characters_are_shown_as_escapes(raw: str, shown: str) -> None:
    assert escaped(raw) == shown
    assert printable(raw) == shown


def test_every_nul_free_c0_c1_and_bidi_character_is_escaped() -> None:
    shown = escaped(C0_WITHOUT_NUL + C1 + BIDI + "\x7f")
    assert shown.isprintable()
    assert unescape(shown) == C0_WITHOUT_NUL + C1 + BIDI + "\x7f"


@given(st.text())
def test_escaped_text_is_printable_and_says_exactly_what_is_stored(text: str) -> None:
    shown = escaped(text)
    assert shown.isprintable()
    assert unescape(shown) == text


@given(st.text())
def test_unicode_escapes_parse_back_as_a_toml_string(text: str) -> None:
    shown = escaped(text, byte_escapes=False)
    assert shown.isprintable()
    literal = shown.replace('"', '\\"')
    assert tomllib.loads(f'value = "{literal}"')["value"] == text


def test_a_long_value_is_clipped_with_a_marker_that_counts_what_is_hidden() -> None:
    shown = printable("x" * 5000)
    assert shown == "x" * MAX_SHOWN + "…[+4,900 chars]"
    assert printable("x" * MAX_SHOWN) == "x" * MAX_SHOWN


def test_clipping_counts_escapes_and_never_cuts_one_in_half() -> None:
    shown = printable("\x1b" * 60, limit=10)
    assert shown == "\\x1b\\x1b…[+58 chars]"


@given(st.text(), st.integers(min_value=4, max_value=50))
def test_clipped_text_is_printable_and_a_prefix_of_the_escaped_text(text: str, limit: int) -> None:
    shown = printable(text, limit)
    assert shown.isprintable()
    head, mark, _ = shown.partition("…[+")
    assert escaped(text).startswith(head)
    assert len(head) <= limit
    assert bool(mark) == (escaped(text) != head)


def test_printable_lines_keeps_line_breaks_and_escapes_the_rest() -> None:
    text = "Traceback\n  File \x1b[31mx\n\x07boom\u202e"
    assert printable_lines(text) == "Traceback\n  File \\x1b[31mx\n\\x07boom\\u202e"


@pytest.mark.parametrize(
    ("text", "width"),
    [("abc", 3), ("日本", 4), ("e\u0301", 1), ("…[+3 chars]", 11), ("", 0)],
)
def test_display_width_counts_terminal_columns(text: str, width: int) -> None:
    assert display_width(text) == width
