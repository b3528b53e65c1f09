"""The stress run's solver inboxes, in a process of their own.

    .venv/bin/python -m tests.stress.inbox_worker ws://relay-a,ws://relay-b SECRET [SECRET ...]

Each solver gets a nostr-sdk `SolverInbox` on every relay. Opening a gift wrap costs about a
millisecond of CPU; thirty thousand of them in the daemon's process, or in the harness that
times the daemon, would distort what is measured, so they live here. The worker prints
`ready` once every inbox is subscribed, then one JSON line per DM it opens:

    ["dm", solver_index, dispute_id, wrap_id, sender_hex, monotonic_seconds]

and `["error", solver_index, text]` for anything an inbox could not handle. It serves until
its stdin closes, then closes the inboxes and exits.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
from collections.abc import Sequence
from typing import Final

from tests.support.solver_inbox import ReceivedDm, SolverInbox

DISPUTE_LINE: Final = re.compile(r"^dispute_id: (\S+)$", re.MULTILINE)
READY: Final = "ready"


class _Reporter:
    """One stdout for several inbox threads: whole lines, flushed as they come."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, *fields: object) -> None:
        self.raw(json.dumps(list(fields)))

    def raw(self, text: str) -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def dm(self, index: int, dm: ReceivedDm) -> None:
        match = DISPUTE_LINE.search(dm.content)
        if match is None:
            self.line("error", index, f"wrap {dm.wrap_id} carries no dispute_id line")
            return
        self.line("dm", index, match.group(1), dm.wrap_id, dm.sender_hex, dm.received_at)


def serve(relay_urls: Sequence[str], secrets: Sequence[str]) -> None:
    reporter = _Reporter()
    inboxes = [
        SolverInbox(secret, relay_urls, on_message=functools.partial(reporter.dm, index))
        for index, secret in enumerate(secrets)
    ]
    try:
        for inbox in inboxes:
            inbox.start()
        reporter.raw(READY)
        sys.stdin.read()  # until the harness closes our stdin
    finally:
        for index, inbox in enumerate(inboxes):
            for error in inbox.errors():
                reporter.line("error", index, error)
            inbox.close()


def main(argv: Sequence[str]) -> None:
    relays, *secrets = argv
    serve(relays.split(","), secrets)


if __name__ == "__main__":
    main(sys.argv[1:])
