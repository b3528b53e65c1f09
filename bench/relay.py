"""Relay pool throughput: pipelined publishing to a real relay, publish -> OK latency of a few
EVENTs written back to back, inbound verify + dedup, and the reconnect time after a relay
restart.

Plain script: ``.venv/bin/python -m bench.relay``. Relays are rust-nostr's LocalRelay in
subprocesses (tests/support/local_relay.py) on loopback ports. Each throughput figure is the
best of a few rounds.
"""

from __future__ import annotations

import time

import trio

from serbero.actors.relay import InboundEvent
from serbero.actors.relay_pool import EventIntake, open_relay_pool
from serbero.log import configure_logging
from serbero.protocol.event import Event, encode_event, sign_event
from serbero.protocol.keys import Keys
from serbero.protocol.messages import Filter, RelayEvent, decode_relay_frame
from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port

ROUNDS = 3
PUBLISH_EVENTS = 4000
INBOUND_EVENTS = 5000
# EVENTs written back to back per round (as a dispute's DMs to five solvers go out), and rounds.
BACK_TO_BACK = 5
OK_ROUNDS = 200
# Seconds a relay stays down before it restarts, each with how many runs: while it refuses
# connections it is tried every ~2 s, so its return is seen within ~2 s however long it was
# away (the handshake backoff, which would have reached 16-60 s, is not involved).
RESTART_DOWNTIMES = ((0.0, 3), (2.0, 3), (5.0, 3), (20.0, 1), (70.0, 1))
# LocalRelay's cap on stored events returned for one REQ.
STORED_PER_REQ = 500
TARGET_PUBLISH_PER_S = 2000.0
TARGET_INBOUND_PER_S = 5000.0
TARGET_RECONNECT_S = 3.0
TARGET_OK_P95_MS = 3.0


def make_events(keys: Keys, count: int, tag: str) -> list[Event]:
    """`count` events; the i-th is tagged `<tag>-<i // STORED_PER_REQ>`."""
    now = int(time.time())
    return [
        sign_event(
            keys,
            created_at=now,
            kind=1,
            tags=[["t", f"{tag}-{i // STORED_PER_REQ}"]],
            content=f"{tag} {i}",
        )
        for i in range(count)
    ]


def row(label: str, value: float, unit: str, target: float, higher_is_better: bool = True) -> None:
    ok = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    print(f"{label:<52} {value:>9.1f} {unit:<9} target {sign} {target:g}  {'OK' if ok else 'MISS'}")


async def publish_round(url: str, keys: Keys, events: list[Event]) -> float:
    """Events/s for publishing `events` concurrently (pipelined) and collecting every OK."""
    accepted = 0
    async with open_relay_pool([url], keys) as pool:
        await pool.wait_connected()

        async def publish(event: Event) -> None:
            nonlocal accepted
            result = await pool.publish(event)
            accepted += result.sent

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for event in events:
                nursery.start_soon(publish, event)
        elapsed = time.perf_counter() - start
    if accepted != len(events):
        raise RuntimeError(f"only {accepted} of {len(events)} publishes were accepted")
    return len(events) / elapsed


async def back_to_back_round(url: str, keys: Keys, rounds: int) -> list[float]:
    """Milliseconds from writing BACK_TO_BACK EVENTs at once to each one's OK, every round."""
    latencies: list[float] = []
    async with open_relay_pool([url], keys) as pool:
        await pool.wait_connected()
        for r in range(rounds):
            events = [
                sign_event(keys, created_at=int(time.time()), kind=1, tags=[], content=f"{r} {i}")
                for i in range(BACK_TO_BACK)
            ]

            async def publish(event: Event, start: float) -> None:
                result = await pool.publish(event)
                if not result.sent:
                    raise RuntimeError(f"publish refused: {result.outcomes}")
                latencies.append((time.perf_counter() - start) * 1000)

            async with trio.open_nursery() as nursery:
                start = time.perf_counter()
                for event in events:
                    nursery.start_soon(publish, event, start)
            await trio.sleep(0.01)  # rounds apart, as bursts are
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def intake_round(frames: list[str], unique: int) -> float:
    """Unique events/s through frame decode, verification once, and dedup across two relays."""
    intake = EventIntake(wall_clock=lambda: int(time.time()))
    events = intake.open_live("s", "bench", Filter(kinds=[1]), buffer=len(frames))
    relays = ("ws://relay-a", "ws://relay-b")
    start = time.perf_counter()
    for index, frame_text in enumerate(frames):
        frame = decode_relay_frame(frame_text)
        assert isinstance(frame, RelayEvent)
        await intake.handle(InboundEvent(relays[index % 2], frame.sub_id, frame.event))
    elapsed = time.perf_counter() - start
    delivered = 0
    while True:
        try:
            events.receive_nowait()
        except trio.WouldBlock:
            break
        delivered += 1
    if delivered != unique:
        raise RuntimeError(f"delivered {delivered}, expected {unique}")
    return unique / elapsed


async def end_to_end_round(urls: list[str], tag: str, count: int) -> float:
    """Unique events/s received from two relays holding the same events (each sent twice).

    LocalRelay answers a REQ with at most 500 stored events, so the events carry one of
    several `t` tags and one subscription per tag pulls them all at once."""
    async with open_relay_pool(urls, Keys.generate()) as pool:
        await pool.wait_connected(len(urls))
        start = time.perf_counter()
        subs = [
            await pool.subscribe(Filter(kinds=[1], t=[f"{tag}-{part}"]), name="bench")
            for part in range(count // STORED_PER_REQ)
        ]
        with trio.fail_after(60):
            for sub in subs:
                for _ in range(STORED_PER_REQ):
                    await sub.events.receive()
        return count / (time.perf_counter() - start)


async def seed(urls: list[str], author: Keys, events: list[Event]) -> None:
    async with open_relay_pool(urls, author) as pool:
        await pool.wait_connected(len(urls))
        async with trio.open_nursery() as nursery:
            for event in events:
                nursery.start_soon(pool.publish, event)


async def reconnect_after_restart(relay: LocalRelayProcess, downtime: float) -> float:
    """Seconds from the relay accepting connections again (after `downtime` s down) to an
    event arriving through the re-sent subscription, with the default (production) timing."""
    author = Keys.generate()
    flt = Filter(kinds=[1], authors=[author.public_hex])
    async with open_relay_pool([relay.url], Keys.generate()) as subscriber:
        sub = await subscriber.subscribe(flt, name="bench")
        await subscriber.wait_connected()
        await relay.astop()
        while subscriber.connected_count():
            await trio.sleep(0.005)
        await trio.sleep(downtime)
        await relay.astart()
        returned = time.perf_counter()
        # The restarted relay is empty: this event can only arrive through the re-sent REQ.
        async with open_relay_pool([relay.url], author) as publisher:
            await publisher.wait_connected()
            event = make_events(author, 1, "restart")[0]
            await publisher.publish(event)
        with trio.fail_after(90):  # past the 60 s backoff cap the old reconnect could reach
            received = await sub.events.receive()
        if received.event != event:
            raise RuntimeError("an unexpected event came through the subscription")
        return time.perf_counter() - returned


async def main() -> None:
    configure_logging("error")
    relay_a = LocalRelayProcess(free_loopback_port())
    relay_b = LocalRelayProcess(free_loopback_port())
    relay_a.start()
    relay_b.start()
    try:
        publisher = Keys.generate()
        publish_rates = [
            await publish_round(
                relay_a.url, publisher, make_events(publisher, PUBLISH_EVENTS, f"pub{r}")
            )
            for r in range(ROUNDS)
        ]
        row(
            f"publish, pipelined ({PUBLISH_EVENTS} events, 1 relay)",
            max(publish_rates),
            "events/s",
            TARGET_PUBLISH_PER_S,
        )

        latencies = await back_to_back_round(relay_a.url, publisher, OK_ROUNDS)
        burst = f"{BACK_TO_BACK} EVENTs back to back, {OK_ROUNDS} rounds"
        p50 = percentile(latencies, 0.5)
        print(f"{'publish -> OK p50 (' + burst + ')':<52} {p50:>9.2f} ms")
        p95 = percentile(latencies, 0.95)
        row(f"publish -> OK p95 ({burst})", p95, "ms", TARGET_OK_P95_MS, False)

        author = Keys.generate()
        inbound = make_events(author, INBOUND_EVENTS, "in")
        frames = []
        for event in inbound:
            text = f'["EVENT","s",{encode_event(event).decode()}]'
            frames += [text, text]
        intake_rates = [await intake_round(frames, INBOUND_EVENTS) for _ in range(ROUNDS)]
        row(
            f"inbound decode+verify+dedup ({INBOUND_EVENTS} x 2 copies)",
            max(intake_rates),
            "events/s",
            TARGET_INBOUND_PER_S,
        )

        urls = [relay_a.url, relay_b.url]
        e2e_rates = []
        for r in range(ROUNDS):
            tag = f"e2e{r}"
            await seed(urls, author, make_events(author, INBOUND_EVENTS, tag))
            e2e_rates.append(await end_to_end_round(urls, tag, INBOUND_EVENTS))
        row(
            f"inbound end-to-end, 2 LocalRelays ({INBOUND_EVENTS} x 2)",
            max(e2e_rates),
            "events/s",
            TARGET_INBOUND_PER_S,
        )

        for downtime, runs in RESTART_DOWNTIMES:
            restarts = [await reconnect_after_restart(relay_a, downtime) for _ in range(runs)]
            row(
                f"relay back after {downtime:g} s down -> resubscribed (max of {runs})",
                max(restarts),
                "s",
                TARGET_RECONNECT_S,
                higher_is_better=False,
            )
            print(f"{'':<52} runs: {', '.join(f'{s:.2f}' for s in restarts)} s")
    finally:
        relay_a.stop()
        relay_b.stop()


if __name__ == "__main__":
    trio.run(main)
