"""Text from outside (the database, relays, config files) made safe to show on a terminal.

The reference stores any dispute id it receives, so a database can hold `ESC[2J`, a bell or a
right-to-left override, and a relay's NOTICE can hold the same. Printed raw, such text clears
the operator's screen, rings the bell or reorders what they read. Every human-readable output
(operator commands, console log lines, the demo) passes outside text through `printable`:
control and other non-printable characters are shown as escapes (`\\x1b`, `\\u202e`), a
backslash as `\\\\` so an escape is never ambiguous, and a long value is clipped with a marker
that says how much is hidden. JSON output never comes here: it stays exact (BEY-28).
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = [
    "MAX_SHOWN",
    "display_width",
    "escaped",
    "printable",
    "printable_lines",
]

# Characters of one value shown before clipping: a UUID or a 64-hex key fits with room to
# spare, a 5,000-character id does not flood the screen.
MAX_SHOWN: Final = 100
CLIP_MARK: Final = "…[+{hidden} chars]"

_NAMED: Final = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_WIDE: Final = frozenset({"W", "F"})


def _escape(ch: str, *, byte_escapes: bool) -> str:
    named = _NAMED.get(ch)
    if named is not None:
        return named
    if ch.isprintable():  # False for C0/C1 controls, DEL, format (bidi) and unassigned
        return ch
    code = ord(ch)
    if code <= 0xFF and byte_escapes:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escaped(text: str, *, byte_escapes: bool = True) -> str:
    """`text` with every non-printable character (and the backslash) as an escape.

    `byte_escapes=False` writes `\\u00NN` rather than `\\xNN`: the form TOML and JSON strings
    accept, for output that must still parse.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(ch, byte_escapes=byte_escapes) for ch in text)


def printable(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` escaped and, past `limit` shown characters, clipped with a marker.

    Clipping counts what is shown, escapes included, and never cuts an escape in half.
    """
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        return text
    shown: list[str] = []
    used = 0
    for index, ch in enumerate(text):
        piece = _escape(ch, byte_escapes=True)
        if used + len(piece) > limit:
            return "".join(shown) + CLIP_MARK.format(hidden=f"{len(text) - index:,}")
        shown.append(piece)
        used += len(piece)
    return "".join(shown)


def printable_lines(text: str) -> str:
    """Several lines (a traceback, an error message) escaped line by line, none clipped."""
    return "\n".join(escaped(line) for line in text.split("\n"))


def display_width(text: str) -> int:
    """Terminal columns `text` takes: wide East Asian characters two, combining marks none.

    For printable text (after `printable`), so table columns line up on screen.
    """
    if text.isascii():
        return len(text)
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in _WIDE else 1
    return width
