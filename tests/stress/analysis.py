"""After the stress run: what the database, the daemon's log and the samples say.

The database is read with the standard library's sqlite3, once the daemon has stopped (two
SQLite libraries in one process must not share a WAL file while a writer is live).
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import msgspec

from serbero.actors.delivery import SEND_FAILED_PREFIX
from tests.stress.outages import OutageRecord
from tests.stress.probes import Sample, median_fds, median_rss, window

INITIAL: Final = "initial"
# A drop logged this long before the harness's stop call still counts as that outage's.
PLANNED_SLACK: Final = 0.2
# Log events counted for the report (by name); the relay link events are analysed apart.
COUNTED_EVENTS: Final = (
    "actor_crashed",
    "daemon_terminated",
    "degraded_all_relays_down",
    "relays_recovered",
    "notification_failed",
    "notification_record_failed",
    "relay_disconnected",
    "relay_connected",
    "relay_frame_malformed",
    "subscription_closed",
    "invalid_event_discarded",
    "outbox_abandoned",
)


# --- database ---------------------------------------------------------------------------------


class DatabaseFigures(msgspec.Struct, frozen=True):
    """The notification record of the run.

    `outbox` counts outbox rows by `notif_type/state`; `attempts` histograms the initial rows'
    hand-outs; `notifications` counts attempt rows by `notif_type/status`; `sent_per_pair`
    histograms how many `sent` initial rows each (dispute, solver) pair has; `failed_reasons`
    counts failed rows by their error text (relay URLs replaced by their labels).
    """

    disputes: int
    states: dict[str, int]
    notified_transitions: int
    outbox: dict[str, int]
    attempts: dict[int, int]
    notifications: dict[str, int]
    sent_per_pair: dict[int, int]
    pairs_with_sent: int
    failed_reasons: dict[str, int]

    @property
    def initial_attempts(self) -> int:
        return sum(count * attempts for attempts, count in self.attempts.items())

    @property
    def initial_rows(self) -> int:
        return sum(
            count for key, count in self.notifications.items() if key.startswith(INITIAL + "/")
        )


def _rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def read_database(
    path: Path, mostro_pubkey: str, relay_labels: Mapping[str, str]
) -> DatabaseFigures:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        states = dict(
            _rows(
                conn,
                "SELECT lifecycle_state, COUNT(*) FROM disputes WHERE mostro_pubkey = ?"
                " GROUP BY lifecycle_state",
                mostro_pubkey,
            )
        )
        [(notified,)] = _rows(
            conn, "SELECT COUNT(*) FROM dispute_state_transitions WHERE to_state = 'notified'"
        )
        outbox = {
            f"{kind}/{state}": count
            for kind, state, count in _rows(
                conn,
                "SELECT notif_type, state, COUNT(*) FROM notification_outbox"
                " GROUP BY notif_type, state",
            )
        }
        attempts = dict(
            _rows(
                conn,
                "SELECT attempts, COUNT(*) FROM notification_outbox WHERE notif_type = ?"
                " GROUP BY attempts ORDER BY attempts",
                INITIAL,
            )
        )
        notifications = {
            f"{kind}/{status}": count
            for kind, status, count in _rows(
                conn,
                "SELECT notif_type, status, COUNT(*) FROM notifications"
                " GROUP BY notif_type, status",
            )
        }
        sent_per_pair = dict(
            _rows(
                conn,
                "SELECT sent, COUNT(*) FROM (SELECT COUNT(*) AS sent FROM notifications"
                " WHERE notif_type = ? AND status = 'sent' GROUP BY dispute_id, solver_pubkey)"
                " GROUP BY sent ORDER BY sent",
                INITIAL,
            )
        )
        failed = Counter[str]()
        for message, count in _rows(
            conn,
            "SELECT error_message, COUNT(*) FROM notifications WHERE status = 'failed'"
            " GROUP BY error_message",
        ):
            failed[_label_relays(str(message), relay_labels)] += count
    finally:
        conn.close()
    return DatabaseFigures(
        disputes=sum(states.values()),
        states=states,
        notified_transitions=notified,
        outbox=outbox,
        attempts=attempts,
        notifications=notifications,
        sent_per_pair=sent_per_pair,
        pairs_with_sent=sum(sent_per_pair.values()),
        failed_reasons=dict(failed.most_common()),
    )


def dispute_states(path: Path) -> dict[str, str]:
    """Every dispute the daemon recorded, with its lifecycle state."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(_rows(conn, "SELECT dispute_id, lifecycle_state FROM disputes"))
    finally:
        conn.close()


def _label_relays(text: str, labels: Mapping[str, str]) -> str:
    text = text.removeprefix(SEND_FAILED_PREFIX)
    for url, label in labels.items():
        text = text.replace(url, label)
    return text


# --- the daemon's log ---------------------------------------------------------------------------


def log_time(record: Mapping[str, Any]) -> float:
    """A record's `timestamp` (ISO 8601, UTC) as unix seconds."""
    return datetime.fromisoformat(str(record["timestamp"])).timestamp()


def count_events(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts = Counter(str(record.get("event")) for record in records)
    return {name: counts[name] for name in COUNTED_EVENTS if counts[name]}


class LinkChange(msgspec.Struct, frozen=True):
    at: float  # unix seconds
    connected: bool


def link_changes(records: Sequence[Mapping[str, Any]], url: str) -> list[LinkChange]:
    """The daemon's link to `url` going up and down, from its log, in order."""
    changes = []
    for record in records:
        event = record.get("event")
        if record.get("relay") != url or event not in ("relay_connected", "relay_disconnected"):
            continue
        changes.append(LinkChange(at=log_time(record), connected=event == "relay_connected"))
    return changes


class SubscriptionSent(msgspec.Struct, frozen=True):
    """The daemon sent (or re-sent) a subscription's REQ: when, where, and its `since`."""

    at: float  # unix seconds
    relay: str
    name: str
    since: int | None


def subscriptions_sent(records: Sequence[Mapping[str, Any]]) -> list[SubscriptionSent]:
    return [
        SubscriptionSent(
            at=log_time(record),
            relay=str(record.get("relay")),
            name=str(record.get("subscription")),
            since=record.get("since"),
        )
        for record in records
        if record.get("event") == "subscription_sent"
    ]


class RelayReturn(msgspec.Struct, frozen=True):
    """One relay of one outage, as the daemon lived it: whether its link was up when the relay
    was stopped, how long it took to notice the drop, and how long after the restart it was
    connected again (None: not within the run)."""

    label: str
    was_linked: bool
    noticed_after: float | None
    back_after: float | None


def relay_returns(
    record: OutageRecord,
    urls: Sequence[str],
    labels: Mapping[str, str],
    links: Mapping[str, list[LinkChange]],
) -> list[RelayReturn]:
    returns = []
    stop = record.stopped_wall - PLANNED_SLACK
    for index in record.outage.relays:
        url = urls[index]
        changes = links[url]
        before = [change for change in changes if change.at < stop]
        was_linked = before[-1].connected if before else True
        drop = next(
            (c.at for c in changes if not c.connected and stop <= c.at <= record.restarted_wall),
            None,
        )
        back = next((c.at for c in changes if c.connected and c.at >= stop), None)
        returns.append(
            RelayReturn(
                label=labels[url],
                was_linked=was_linked,
                noticed_after=None if drop is None else max(0.0, drop - record.stopped_wall),
                back_after=None if back is None else back - record.restarted_wall,
            )
        )
    return returns


def no_link_intervals(
    links: Mapping[str, list[LinkChange]], start: float, end: float
) -> list[tuple[float, float]]:
    """The spans within [start, end] (unix seconds) in which the daemon had no relay link;
    every link counts as up at `start` (the load starts with both connected)."""
    events = sorted(
        (change.at, url, change.connected)
        for url, changes in links.items()
        for change in changes
        if start <= change.at <= end
    )
    up = dict.fromkeys(links, True)
    spans: list[tuple[float, float]] = []
    down_since: float | None = None
    for at, url, connected in events:
        up[url] = connected
        if not any(up.values()) and down_since is None:
            down_since = at
        elif any(up.values()) and down_since is not None:
            spans.append((down_since, at))
            down_since = None
    if down_since is not None:
        spans.append((down_since, end))
    return spans


class LinkDrop(msgspec.Struct, frozen=True):
    """The daemon's link to `url` dropped `at` (unix seconds); `planned` when the harness
    had stopped that relay; `gap` is the time until the daemon was connected again."""

    url: str
    at: float
    planned: bool
    gap: float | None


def link_drops(
    links: Mapping[str, list[LinkChange]], urls: Sequence[str], outages: Sequence[OutageRecord]
) -> list[LinkDrop]:
    drops = []
    for index, url in enumerate(urls):
        changes = links[url]
        for position, change in enumerate(changes):
            if change.connected:
                continue
            planned = any(
                index in record.outage.relays
                and record.stopped_wall - PLANNED_SLACK <= change.at <= record.restarted_wall
                for record in outages
            )
            back = next((c.at for c in changes[position + 1 :] if c.connected), None)
            drops.append(
                LinkDrop(
                    url=url,
                    at=change.at,
                    planned=planned,
                    gap=None if back is None else back - change.at,
                )
            )
    return sorted(drops, key=lambda drop: drop.at)


# --- resources -----------------------------------------------------------------------------------


class ResourceFigures(msgspec.Struct, frozen=True):
    """Medians over three windows: before the load (`ready`), the middle fifth of the load
    (`plateau`), and the idle settle after every DM arrived (`end`); `settle_*_span` is the
    max - min within the settle window; `load_cpu_percent` the CPU the process used during
    the load, in percent of one core."""

    ready_rss: float
    plateau_rss: float
    end_rss: float
    peak_rss: float
    settle_rss_span: float
    ready_fds: float
    plateau_fds: float
    end_fds: float
    peak_fds: int
    settle_fds_span: int
    load_cpu_percent: float


def resource_figures(
    samples: Sequence[Sample],
    *,
    ready: tuple[float, float],
    load: tuple[float, float],
    settle: tuple[float, float],
) -> ResourceFigures:
    start, end = load
    span = end - start
    plateau = window(samples, start + 0.4 * span, start + 0.6 * span)
    before = window(samples, *ready)
    after = window(samples, *settle)
    loaded = window(samples, start, end)
    if not (plateau and before and after and len(loaded) > 1):
        raise ValueError(
            f"too few samples: {len(before)} ready, {len(plateau)} plateau, {len(after)} end"
        )
    return ResourceFigures(
        ready_rss=median_rss(before),
        plateau_rss=median_rss(plateau),
        end_rss=median_rss(after),
        peak_rss=max(sample.rss_mb for sample in samples),
        settle_rss_span=max(s.rss_mb for s in after) - min(s.rss_mb for s in after),
        ready_fds=median_fds(before),
        plateau_fds=median_fds(plateau),
        end_fds=median_fds(after),
        peak_fds=max(sample.fds for sample in samples),
        settle_fds_span=max(s.fds for s in after) - min(s.fds for s in after),
        load_cpu_percent=100
        * (loaded[-1].cpu - loaded[0].cpu)
        / max(loaded[-1].at - loaded[0].at, 1e-9),
    )
