"""BEY-21 / CORE-24..29 end to end: hostile dispute events are logged once, stored nowhere,
notify nobody, and the daemon keeps deciding the next real dispute."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from serbero.protocol.dispute_event import DISPUTE_EVENT_KIND
from serbero.protocol.event import Event, encode_event, sign_event
from serbero.protocol.keys import Keys
from tests.daemon.support import (
    Harness,
    count_rows,
    eventually,
    in_thread,
    make_config,
    query,
    running_daemon,
)
from tests.relay.raw_relay import RawConnection, open_raw_relay
from tests.support.mostro_sim import MostroSim
from tests.support.relay_fixtures import LocalRelayProcess


def mostro_tags(
    dispute_id: str, status: str = "initiated", initiator: str = "buyer"
) -> list[list[str]]:
    return [
        ["d", dispute_id],
        ["s", status],
        ["initiator", initiator],
        ["y", "mostro"],
        ["z", "dispute"],
    ]


# name -> the tags Mostro's key signs, and the log event that must report it (once).
HOSTILE = {
    "empty d": ([["d", ""], ["s", "initiated"], ["initiator", "buyer"]], "dispatch_error"),
    "129-char id": (mostro_tags("x" * 129), "dispatch_error"),
    "newline in id": (mostro_tags("d-1\nstatus: settled"), "dispatch_error"),
    "control char in id": (mostro_tags("d-1\x07"), "dispatch_error"),
    "space in id": (mostro_tags("d 1"), "dispatch_error"),
    "bad initiator": (mostro_tags("d-bad-initiator", initiator="admin"), "dispatch_error"),
    "no initiator": ([["d", "d-no-initiator"], ["s", "initiated"]], "dispatch_error"),
    "unknown status": (mostro_tags("d-unknown", status="escalated"), "unrecognised_status_skipped"),
    "uppercase S only": (
        [["d", "d-upper"], ["S", "initiated"], ["initiator", "buyer"]],
        "missing_status_tag",
    ),
    "forged p line": (
        [*mostro_tags("d-forged-p", status="in-progress"), ["p", "abc\nlifecycle_state: x"]],
        "dispatch_error",
    ),
}


async def test_each_hostile_kind_is_refused_and_the_daemon_lives_on(
    local_relay: LocalRelayProcess, tmp_path: Path
) -> None:
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        impostor = Keys.generate()
        with capture_logs() as logs:
            async with running_daemon(h.config) as context:
                for tags, _ in HOSTILE.values():
                    await in_thread(h.sim.publish_raw_tags, tags)
                await _publish_as(impostor, local_relay.url, mostro_tags("d-impostor"))
                await in_thread(h.sim.open_dispute, "d-real", "buyer")
                (dms,) = await h.wait_dms(1)
                await h.settled(context, len(HOSTILE) + 1)
        assert len(dms) == 1 and "dispute_id: d-real" in dms[0].content
        assert [row for row in _disputes(h)] == ["d-real"]
        assert h.rows("notifications") == 1
        assert h.rows("dispute_state_transitions") == 1
    names = Counter(entry["event"] for entry in logs)
    expected = Counter(event for _, event in HOSTILE.values())
    for event, count in expected.items():
        assert names[event] == count, (event, names[event])
    assert names["detected"] == 1
    assert not any("\n" in str(value) for entry in logs for value in entry.values()), (
        "a newline from hostile input reached a log field"
    )


def _disputes(h: Harness) -> list[str]:
    return [row[0] for row in query(h.db_path, "SELECT dispute_id FROM disputes")]


async def _publish_as(keys: Keys, relay_url: str, tags: list[list[str]]) -> None:
    other = MostroSim(keys.secret.hex(), [relay_url])
    await trio.to_thread.run_sync(other.start)
    try:
        await in_thread(other.publish_raw_tags, tags)
    finally:
        await trio.to_thread.run_sync(other.close)


def _tampered(event: Event) -> Event:
    """The same event with one signature byte flipped."""
    flipped = ("0" if event.sig[0] != "0" else "1") + event.sig[1:]
    return Event(
        event.id, event.pubkey, event.created_at, event.kind, event.tags, event.content, flipped
    )


async def test_what_a_real_relay_would_refuse_from_a_lying_relay(tmp_path: Path) -> None:
    """CORE-24, CORE-29: a relay that ignores our filter, forges signatures and serves an
    addressable event without `d`: the first two are discarded before any decision, the
    third is a handler error; nothing is stored and the daemon stays up."""
    serbero, mostro, impostor = Keys.generate(), Keys.generate(), Keys.generate()
    # Dated ahead of the cold-start since (CORE-21) so a slow start-up cannot make the filter,
    # rather than the checks under test, discard them.
    now = int(time.time()) + 60
    forged = _tampered(
        sign_event(
            mostro,
            created_at=now,
            kind=DISPUTE_EVENT_KIND,
            tags=mostro_tags("d-forged"),
            content="",
        )
    )
    foreign = sign_event(
        impostor, created_at=now, kind=DISPUTE_EVENT_KIND, tags=mostro_tags("d-foreign"), content=""
    )
    no_d = sign_event(
        mostro,
        created_at=now,
        kind=DISPUTE_EVENT_KIND,
        tags=[["s", "initiated"], ["initiator", "buyer"]],
        content="",
    )
    served = trio.Event()

    async def lying_relay(conn: RawConnection) -> None:
        while True:
            frame = await conn.receive_json()
            if frame[0] == "REQ":
                for event in (forged, foreign, no_d):
                    await conn.send_text(f'["EVENT","{frame[1]}",{encode_event(event).decode()}]')
                await conn.send_json(["EOSE", frame[1]])
                served.set()

    db_path = str(tmp_path / "serbero.db")
    with capture_logs() as logs:
        async with open_raw_relay(lying_relay) as relay:
            config = make_config(db_path, [relay.url], serbero=serbero, mostro=mostro)
            async with running_daemon(config) as context:
                with trio.fail_after(5):
                    await served.wait()
                # The relay link handles frames in order: no_d's error comes last.
                await eventually(lambda: any(e["event"] == "dispatch_error" for e in logs))
                assert context.snapshot().events_received == 1
    names = Counter(entry["event"] for entry in logs)
    assert names["invalid_event_discarded"] >= 1
    assert names["dispatch_error"] == 1
    assert names["routed"] == 0
    assert count_rows(db_path, "disputes") == 0


@pytest.mark.parametrize("status", ["settled", "in-progress"])
async def test_hostile_ids_on_later_statuses_are_refused_too(
    local_relay: LocalRelayProcess, tmp_path: Path, status: str
) -> None:
    """BEY-21 holds for every status, so late discovery (BEY-4) never stores a hostile id."""
    db_path = str(tmp_path / "serbero.db")
    async with Harness(local_relay.url, db_path, valid_solvers=1) as h:
        async with running_daemon(h.config) as context:
            await in_thread(h.sim.publish_raw_tags, mostro_tags("bad\nid", status=status))
            await h.settled(context, 1)
        assert h.rows("disputes") == 0
