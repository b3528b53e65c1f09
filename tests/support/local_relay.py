"""Run rust-nostr's `LocalRelay` in its own process, for tests and benchmarks.

nostr-sdk is asyncio-based and must never run inside the Trio loop, so the relay lives in a
subprocess. Usage:

    .venv/bin/python tests/support/local_relay.py --port P [--rate-limit N] [--nip42 MODE]

It prints the relay URL (`ws://127.0.0.1:P`) on one stdout line once it accepts connections,
then serves until its stdin closes or it gets SIGTERM/SIGINT. The relay keeps events in memory
only, so a restart on the same port starts empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading

import nostr_sdk

LOOPBACK = "127.0.0.1"
# Requests per connection the relay tolerates; far above anything a test sends.
MAX_REQS = 10_000
# Events per minute when no --rate-limit is given: unlimited for practical purposes.
UNLIMITED_NOTES_PER_MINUTE = 1_000_000
NIP42_MODES = {
    "read": nostr_sdk.LocalRelayBuilderNip42Mode.READ,
    "write": nostr_sdk.LocalRelayBuilderNip42Mode.WRITE,
    "both": nostr_sdk.LocalRelayBuilderNip42Mode.BOTH,
}


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=UNLIMITED_NOTES_PER_MINUTE,
        metavar="N",
        help="events accepted per minute per connection",
    )
    parser.add_argument(
        "--nip42",
        choices=sorted(NIP42_MODES),
        default=None,
        help="require NIP-42 authentication for reads, writes or both",
    )
    return parser.parse_args(argv)


def _build(args: argparse.Namespace) -> nostr_sdk.LocalRelay:
    builder = (
        nostr_sdk.LocalRelayBuilder()
        .addr(LOOPBACK)
        .port(args.port)
        .rate_limit(nostr_sdk.RateLimit(max_reqs=MAX_REQS, notes_per_minute=args.rate_limit))
    )
    if args.nip42 is not None:
        builder = builder.nip42(nostr_sdk.LocalRelayBuilderNip42(mode=NIP42_MODES[args.nip42]))
    return builder.build()


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # stdin closing means the process that owns us went away: never outlive it. A daemon
    # thread, so a blocked read never holds up our own exit.
    threading.Thread(target=_wait_stdin_eof, args=(loop, stop), daemon=True).start()

    relay = _build(args)
    await relay.run()
    print(str(await relay.url()), flush=True)
    await stop.wait()
    relay.shutdown()


def _wait_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    # os.read, not sys.stdin: a buffered reader's lock would abort interpreter shutdown.
    while os.read(sys.stdin.fileno(), 4096):
        pass
    loop.call_soon_threadsafe(stop.set)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
