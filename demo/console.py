"""The demo's console: one line per thing that happened, stamped, from any thread.

What it prints came from relays, the daemon's log or the parties: shown through
`printable` (escaped, clipped), so nothing a peer sends can drive the terminal (BEY-28).
"""

from __future__ import annotations

import re
import threading
import time
from typing import Final, TextIO

from serbero.printable import printable

__all__ = ["LINE_SHOWN", "Console"]

# One printed line (a log record, a DM row) is clipped past this many characters.
LINE_SHOWN: Final = 400
_HEX64: Final = re.compile(r"\b[0-9a-f]{64}\b")
_UUID: Final = re.compile(r"\b([0-9a-f]{8})-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


class Console:
    """Thread-safe printing with the seconds since the demo started; peers print from their
    own threads."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._names: dict[str, str] = {}

    def name(self, pubkey_hex: str, label: str) -> None:
        """Show `label` instead of `pubkey_hex` in one-line records."""
        self._names[pubkey_hex] = label

    def shorten(self, text: str) -> str:
        """Known keys by name, other keys and dispute UUIDs cut to their first 8 characters."""
        text = _HEX64.sub(lambda m: self._names.get(m.group(0), m.group(0)[:8] + "…"), text)
        return _UUID.sub(lambda m: m.group(1) + "…", text)

    def line(self, who: str, text: str, body: str | None = None) -> None:
        """One record; `text` and `body` came from relays and the daemon: shown escaped."""
        stamp = f"[{time.monotonic() - self._start:6.1f}s]"
        lines = [f"{stamp} {who:<8} {printable(text, LINE_SHOWN)}"]
        if body is not None:
            lines += [f"{'':<19}| {printable(row, LINE_SHOWN)}" for row in body.split("\n")]
        with self._lock:
            print("\n".join(lines), file=self._stream, flush=True)

    def plain(self, text: str = "") -> None:
        with self._lock:
            print(text, file=self._stream, flush=True)
