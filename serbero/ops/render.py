"""Text for people (aligned tables, UTC times with ages) and JSON for scripts.

Both renderings come from the same structs, so `--json` never says more or less than the
table. On a terminal, 64-hex keys in tables are shortened to keep rows on one line; piped
output keeps every key whole so it can be grepped. Text that came from the database or the
config is shown through `printable`: escaped and clipped, so a hostile dispute id cannot
drive the operator's terminal, and measured after that, so columns stay aligned (BEY-28).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from serbero.ops.mediation import (
    DisputeMediation,
    EscalationView,
    MediationStatus,
    SessionView,
)
from serbero.ops.status import StatusReport
from serbero.ops.timeline import Timeline
from serbero.printable import display_width, printable
from serbero.protocol.dispute_event import DisputeStatus
from serbero.store.disputes import Dispute

__all__ = [
    "format_age",
    "format_time",
    "render_disputes",
    "render_status",
    "render_table",
    "render_timeline",
    "to_json",
]

NONE_SHOWN: Final = "-"
_HEX64: Final = re.compile(r"\b[0-9a-f]{64}\b")
_SHORT_HEAD: Final = 8
_SHORT_TAIL: Final = 4
_COLUMN_GAP: Final = "  "


def to_json(value: Any) -> str:
    """Indented JSON of a struct (or plain data), keys in declaration order."""
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)


def format_time(at: int | None) -> str:
    if at is None:
        return NONE_SHOWN
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))


def format_age(seconds: int) -> str:
    """`42s`, `3m05s`, `2h07m`, `3d04h`: two units at most, enough to judge staleness."""
    seconds = max(0, seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _when(at: int | None, now: int) -> str:
    if at is None:
        return NONE_SHOWN
    return f"{format_time(at)} ({format_age(now - at)} ago)"


def _shorten_keys(text: str) -> str:
    return _HEX64.sub(lambda m: f"{m[0][:_SHORT_HEAD]}…{m[0][-_SHORT_TAIL:]}", text)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, short: bool) -> str:
    """Left-aligned columns of printable cells; the last column is not padded (it may be long)."""
    cells = [list(headers), *([_shorten_keys(c) if short else c for c in row] for row in rows)]
    widths = [max(display_width(row[i]) for row in cells) for i in range(len(headers) - 1)]
    lines = []
    for row in cells:
        padded = [
            cell + " " * (width - display_width(cell))
            for cell, width in zip(row, widths, strict=False)
        ]
        lines.append(_COLUMN_GAP.join([*padded, row[-1]]).rstrip())
    return "\n".join(lines)


def _text(value: Any) -> str:
    """Any stored value as one printable cell."""
    if value is None:
        return NONE_SHOWN
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return printable(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return printable(str(value))


# --- status -------------------------------------------------------------------------------


def render_status(report: StatusReport, *, short: bool) -> str:
    now = report.now
    if report.stopped_at is not None:
        verdict = f"stopped (clean shutdown {_when(report.stopped_at, now)})"
    elif report.healthy:
        verdict = "healthy"
    else:
        verdict = "UNHEALTHY: " + "; ".join(report.problems)
    lines = [
        f"serbero status: {verdict}",
        f"database    {printable(report.database)} (schema version {report.schema_version})",
    ]
    if report.write_lock_holder is not None:
        lines.append(f"write lock  held by process {report.write_lock_holder}")
    if report.heartbeat is None:
        lines.append(f"heartbeat   {NONE_SHOWN}")
    else:
        beat = report.heartbeat
        stale = " STALE" if beat.stale else ""
        lines.append(f"heartbeat   {_when(beat.at, now)}{stale}")
        lines.append(f"started     {_when(beat.started_at, now)}")
    event = report.last_dispute_event
    if event is None:
        lines.append(f"last event  {NONE_SHOWN}")
    else:
        origin = "" if event.source == "health" else " (newest disputes row)"
        event_id = printable(event.event_id or "")
        lines.append(f"last event  {_when(event.at, now)} {event_id}{origin}".rstrip())
    counts = "  ".join(
        f"{printable(state)} {count}" for state, count in report.lifecycle_counts.items()
    )
    lines.append(f"disputes    {counts}  (total {report.disputes_total})")
    if report.outbox is None:
        lines.append("outbox      unavailable (no notification_outbox table)")
    else:
        box = report.outbox
        oldest = (
            "" if box.oldest_pending_at is None else f", oldest {_when(box.oldest_pending_at, now)}"
        )
        lines.append(
            f"outbox      pending {box.pending} (in flight {box.in_flight}{oldest})"
            f"  failed {box.failed}"
        )
    if report.mediation is None:
        lines.append(f"handoffs    pending {report.pending_handoffs}")
    else:
        lines.extend(_mediation_status(report.mediation))
    lines.append("")
    if report.relays is None:
        lines.append("relays      unavailable (no health record tables: reference database)")
    elif not report.relays:
        lines.append("relays      none recorded")
    else:
        lines.append(f"relays      {report.relays_connected} of {len(report.relays)} connected")
        rows = [
            [
                printable(relay.url),
                printable(relay.state),
                _when(relay.since, now),
                _when(relay.last_event_at, now),
            ]
            for relay in report.relays
        ]
        lines.append(render_table(["RELAY", "STATE", "SINCE", "LAST EVENT"], rows, short=short))
    return "\n".join(lines)


def _mediation_status(status: MediationStatus) -> list[str]:
    by_state = "  ".join(
        f"{printable(state)} {count}" for state, count in status.live_by_state.items()
    )
    esc = status.escalations
    return [
        f"mediation   live sessions {status.live_sessions} ({by_state})",
        f"escalations recommended {esc.recommended}  dispatched {esc.dispatched}"
        f"  send failed {esc.send_failed}  pending {esc.pending}",
    ]


# --- disputes -----------------------------------------------------------------------------


def render_disputes(disputes: Sequence[Dispute], now: int, *, short: bool) -> str:
    if not disputes:
        return "no disputes"
    rows = [
        [
            printable(d.dispute_id),
            printable(d.lifecycle_state),
            printable(d.dispute_status),
            printable(d.initiator_role),
            _when(d.detected_at, now),
            _when(d.last_state_change, now),
            _text(d.assigned_solver),
        ]
        for d in disputes
    ]
    headers = ["DISPUTE", "STATE", "STATUS", "INITIATOR", "DETECTED", "LAST CHANGE", "ASSIGNED"]
    return render_table(headers, rows, short=short)


# --- show ---------------------------------------------------------------------------------


def _is_time_key(key: str) -> bool:
    return key.endswith("_at") or key == "event_timestamp"


def _detail(key: str, value: Any) -> str:
    if _is_time_key(key) and isinstance(value, int) and not isinstance(value, bool):
        return format_time(value).replace(" ", "T")
    return _text(value)


def _details(details: dict[str, Any]) -> str:
    """`key=value` pairs, None values left out, times as compact ISO (no spaces)."""
    return " ".join(
        f"{printable(key)}={_detail(key, value)}"
        for key, value in details.items()
        if value is not None
    )


def _confidence(value: float | None) -> str:
    return NONE_SHOWN if value is None else f"{value:.2f}"


def _escalation_line(escalation: EscalationView) -> str:
    handoff = f"handoff {escalation.handoff}"
    if escalation.dispatched_at is not None:
        solvers = "solver" if escalation.recipients == 1 else "solvers"
        handoff += f" {format_time(escalation.dispatched_at)} to {escalation.recipients} {solvers}"
    return f"trigger {printable(escalation.trigger)}  {handoff}"


# The mediation part's first column: "    escalation" and its gap.
_PART_WIDTH: Final = 16


def _superseded(session: SessionView) -> str:
    if session.superseded_by == DisputeStatus.IN_PROGRESS:
        return "a solver took the dispute"
    return f"the dispute was resolved: {printable(session.superseded_by or NONE_SHOWN)}"


def _part_line(what: str, at: int, detail: str) -> str:
    return f"{what:<{_PART_WIDTH}}{format_time(at)}  {detail}"


def _session_lines(session: SessionView, now: int) -> list[str]:
    stale = f" (stale {session.messages_stale})" if session.messages_stale else ""
    rows = [
        (
            "  session",
            session.started_at,
            f"{printable(session.session_id)}  {printable(session.state)}"
            f" (since {_when(session.last_transition_at, now)})  rounds {session.rounds}"
            f"  messages out {session.messages_out} in {session.messages_in}{stale}",
        )
    ]
    for verdict in session.classifications:
        step = "open" if verdict.round == 0 else f"round {verdict.round}"
        detail = f"{step}  {printable(verdict.label)} {_confidence(verdict.confidence)}"
        rows.append(("    verdict", verdict.at, detail))
    for summary in session.summaries:
        delivery = "delivered" if summary.delivered else "not delivered"
        rows.append(
            (
                "    summary",
                summary.at,
                f"{printable(summary.label)} {_confidence(summary.confidence)}  {delivery}:"
                f" sent {summary.sent}, failed {summary.failed}, queued {summary.queued}",
            )
        )
    if session.escalation is not None:
        rows.append(("    escalation", session.escalation.at, _escalation_line(session.escalation)))
    if session.superseded_by is not None:
        rows.append(("    superseded", session.last_transition_at, _superseded(session)))
    return [_part_line(what, at, detail) for what, at, detail in rows]


def _mediation_lines(mediation: DisputeMediation | None, now: int) -> list[str]:
    """The mediation part of `show`: labels, numbers, triggers and times only."""
    if mediation is None:
        return []
    if not (mediation.open_verdicts or mediation.escalations or mediation.sessions):
        return [f"mediation   {NONE_SHOWN}"]
    lines = ["mediation"]
    for verdict in mediation.open_verdicts:
        detail = printable(verdict.decision)
        if verdict.label is not None:
            detail += f" {printable(verdict.label)} {_confidence(verdict.confidence)}"
        if verdict.trigger is not None:
            detail += f" trigger {printable(verdict.trigger)}"
        lines.append(_part_line("  verdict", verdict.at, f"before take: {detail}"))
    for escalation in mediation.escalations:
        lines.append(_part_line("  escalation", escalation.at, _escalation_line(escalation)))
    for session in mediation.sessions:
        lines.extend(_session_lines(session, now))
    return lines


def render_timeline(timeline: Timeline, now: int, *, short: bool) -> str:
    d = timeline.dispute
    lines = [
        f"dispute     {printable(d.dispute_id)}",
        f"state       {printable(d.lifecycle_state)} (since {_when(d.last_state_change, now)})",
        f"status      {printable(d.dispute_status)}   initiator {printable(d.initiator_role)}",
        f"assigned    {_text(d.assigned_solver)}",
        f"detected    {_when(d.detected_at, now)}   event {printable(d.event_id)}",
        f"notified    {_when(d.last_notified_at, now)}",
        f"sessions    {', '.join(map(printable, timeline.sessions)) or NONE_SHOWN}",
    ]
    if timeline.unavailable:
        lines.append(f"unavailable {', '.join(timeline.unavailable)} (tables absent)")
    lines.extend(_mediation_lines(timeline.mediation, now))
    lines.append("")
    rows = [
        [
            format_time(entry.at),
            printable(entry.source),
            printable(entry.kind),
            printable(entry.ref),
            _details(entry.details),
        ]
        for entry in timeline.entries
    ]
    lines.append(render_table(["TIME", "SOURCE", "WHAT", "REF", "DETAILS"], rows, short=short))
    return "\n".join(lines)
