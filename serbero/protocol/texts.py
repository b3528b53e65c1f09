"""Every solver-facing wording, in one place.

Headlines and prose are Serbero's own words; the `key: value` lines, labels and version lines
are machine-parsable and exact (CORE-41). Bodies are lines joined by "\\n" with no trailing
newline. No body ever carries a party's public key (CORE-40): the only inputs are ids, roles,
statuses and the assigned solver's key.

Every value substituted into a line is checked first (BEY-21): a newline or control character
in an id could otherwise forge a header line, so such values raise `TextError` instead.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Final, Literal

import msgspec

from serbero.protocol.dispute_event import (
    RESOLUTION_STATUSES,
    Dispute,
    DisputeStatus,
)

__all__ = [
    "NO_CLASSIFICATION_MARKER",
    "NO_SESSION_MARKER",
    "RESOLUTION_REPORT_VERSION",
    "SUGGESTED_NEXT_STEP_LABEL",
    "UNKNOWN_SOLVER",
    "NoSessionReason",
    "ReportClassification",
    "ReportSession",
    "ResolutionReport",
    "TextError",
    "assignment_notification",
    "check_line_value",
    "dispute_escalation_notice",
    "handoff_prose",
    "initial_notification",
    "is_line_safe",
    "mediation_resolution_report",
    "renotification",
    "resolution_notice",
    "session_escalation_notice",
    "summary_notice",
]

# Literal markers shared with the escalation_handoff/v1 contract; the dash is U+2014.
NO_SESSION_MARKER: Final = "<none — dispute-scoped handoff>"
NO_CLASSIFICATION_MARKER: Final = "<none recorded>"
RESOLUTION_REPORT_VERSION: Final = "mediation_resolution_report/v1"
UNKNOWN_SOLVER: Final = "unknown"
SUGGESTED_NEXT_STEP_LABEL: Final = "Suggested next step: "

# Unicode categories that break or hide line structure: controls (\n, \r, \t, \x85, ...),
# line/paragraph separators and unpaired surrogates.
_LINE_BREAKING_CATEGORIES: Final = frozenset({"Cc", "Zl", "Zp", "Cs"})
# The resolution report's outbound clause for 0, 1 or 2 parties messaged (MED-143/144).
_OUTBOUND_CLAUSES: Final = (
    "No message was sent to either party.",
    "One party was messaged before the external resolution.",
    "Both parties were messaged before the external resolution.",
)


class TextError(ValueError):
    """A value that cannot go into a line-based body (newline, control character, ...)."""


def is_line_safe(value: str) -> bool:
    """True when `value` cannot end a line or smuggle a control character into a body."""
    return not any(unicodedata.category(ch) in _LINE_BREAKING_CATEGORIES for ch in value)


def check_line_value(name: str, value: str) -> str:
    """`value` unchanged if it is safe on one line, else TextError naming the field."""
    if not isinstance(value, str) or not is_line_safe(value):
        raise TextError(f"{name} must be a single line without control characters")
    return value


def _token(name: str, value: str) -> str:
    """A non-empty single-line value (ids, statuses, keys)."""
    check_line_value(name, value)
    if not value:
        raise TextError(f"{name} must not be empty")
    return value


def _body(*lines: str) -> str:
    return "\n".join(lines)


# --- core notifications (CORE-41, BEY-5) --------------------------------------------------


def initial_notification(dispute: Dispute) -> str:
    """The first DM about a newly detected dispute (5 lines)."""
    if dispute.status is not DisputeStatus.INITIATED:
        raise TextError("an initial notification needs an initiated dispute")
    if dispute.initiator not in ("buyer", "seller"):
        raise TextError("an initial notification needs a buyer/seller initiator")
    return _body(
        "New Mostro dispute: a solver is needed.",
        f"dispute_id: {_token('dispute_id', dispute.dispute_id)}",
        f"initiator: {dispute.initiator}",
        f"event_timestamp: {dispute.event_timestamp}",
        f"status: {DisputeStatus.INITIATED}",
    )


def renotification(dispute_id: str, now: int, event_timestamp: int) -> str:
    """The reminder for a dispute nobody took yet (4 lines); elapsed counts from creation."""
    return _body(
        "Reminder: this Mostro dispute is still waiting for a solver.",
        f"dispute_id: {_token('dispute_id', dispute_id)}",
        "lifecycle_state: notified",
        f"time_elapsed_seconds: {now - event_timestamp}",
    )


def assignment_notification(dispute_id: str, assigned_solver: str | None) -> str:
    """Tells every solver the dispute was taken (4 lines); None means `unknown`."""
    solver = (
        UNKNOWN_SOLVER if assigned_solver is None else _token("assigned_solver", assigned_solver)
    )
    return _body(
        "Taken: a solver has picked up this Mostro dispute.",
        f"dispute_id: {_token('dispute_id', dispute_id)}",
        f"assigned_solver: {solver}",
        "lifecycle_state: taken",
    )


def resolution_notice(dispute_id: str, resolution_status: str) -> str:
    """BEY-5: the short closing notice once a dispute reaches a terminal status (4 lines)."""
    if resolution_status not in RESOLUTION_STATUSES:
        raise TextError("a closing notice needs a resolution status")
    return _body(
        "Closed: this Mostro dispute is resolved; no action is needed.",
        f"dispute_id: {_token('dispute_id', dispute_id)}",
        f"status: {resolution_status}",
        "lifecycle_state: resolved",
    )


# --- mediation notices (CORE-41 `mediation_*`, MED-113/126/127) ----------------------------


def session_escalation_notice(session_id: str, dispute_id: str, trigger: str) -> str:
    """MED-126: a live mediation session gave up and needs a human (one line)."""
    return (
        f"Mediation session {_token('session_id', session_id)} for dispute "
        f"{_token('dispute_id', dispute_id)} stopped with trigger: {_token('trigger', trigger)}; "
        "human judgment is needed."
    )


def dispute_escalation_notice(dispute_id: str, trigger: str) -> str:
    """MED-127: reasoning and policy ruled out mediation before any session (one line)."""
    return (
        f"Dispute {_token('dispute_id', dispute_id)} was judged unsuitable for mediation by the "
        f"reasoning verdict and policy (trigger: {_token('trigger', trigger)}); "
        "no session was opened and human judgment is needed."
    )


def summary_notice(summary_text: str, suggested_next_step: str) -> str:
    """MED-113: the summary, a blank line, then `Suggested next step: <one line>`.

    The summary is the model's prose and may span lines; the step is folded onto one line
    (any run of whitespace or control characters becomes one space) so the labelled last
    line stays one line whatever the model wrote. Blank parts raise `TextError`.
    """
    text = summary_text.strip()
    step = " ".join(_fold(suggested_next_step).split())
    if not text or not step:
        raise TextError("a summary notice needs a summary and a suggested next step")
    return f"{text}\n\n{SUGGESTED_NEXT_STEP_LABEL}{step}"


def _fold(value: str) -> str:
    return "".join(
        " " if unicodedata.category(ch) in _LINE_BREAKING_CATEGORIES else ch for ch in value
    )


def handoff_prose(dispute_id: str, trigger: str) -> str:
    """ESC-24 L6 of escalation_handoff/v1: what happened, then what the solver should do.

    Consumers never parse this line; it must still name the dispute, the trigger, the
    TakeDispute instruction and "Serbero's mediation assistance system".
    """
    dispute_id = check_line_value("dispute_id", dispute_id)
    trigger = check_line_value("trigger", trigger)
    return (
        f"Serbero's mediation assistance system handed dispute {dispute_id} "
        f"to a human solver (trigger: {trigger}). "
        "Please run TakeDispute for this dispute on your Mostro instance and decide it yourself."
    )


# --- mediation_resolution_report/v1 (CORE-41, MED-142..144) --------------------------------


class ReportSession(msgspec.Struct, frozen=True):
    """The dispute's most recent mediation session and the state it was in."""

    session_id: str
    state: str


class ReportClassification(msgspec.Struct, frozen=True):
    """The last recorded classification label and its confidence in [0, 1]."""

    label: str
    confidence: float


NoSessionReason = Literal["take_failed", "escalated_before_take", "none"]


class ResolutionReport(msgspec.Struct, frozen=True):
    """The DM body, and the narrative alone (stored in `resolved_externally_reported`)."""

    body: str
    narrative: str


def _session_clause(session: ReportSession | None, no_session_reason: NoSessionReason) -> str:
    if session is not None:
        return (
            f"Mediation session {_token('session_id', session.session_id)} was in state "
            f"{_token('session_state', session.state)} when that happened."
        )
    if no_session_reason == "take_failed":
        return (
            "No session was opened: reasoning cleared the dispute, but the take-dispute "
            "exchange with Mostro did not complete."
        )
    if no_session_reason == "escalated_before_take":
        return (
            "No session was opened: the reasoning verdict recommended escalation before any take."
        )
    return "No mediation session was opened for this dispute."


def _confidence(value: float) -> str:
    if not math.isfinite(value):
        raise TextError("confidence must be a finite number")
    return f"{value:.2f}"


def mediation_resolution_report(
    *,
    dispute_id: str,
    final_status: str,
    session: ReportSession | None,
    classification: ReportClassification | None,
    outbound_party_messages: int,
    no_session_reason: NoSessionReason = "none",
    taken_over: bool = False,
) -> ResolutionReport:
    """The report sent when a dispute with mediation context resolves externally, or when
    a human solver takes over a live mediation (`taken_over`, Q-6: the status is then
    `in-progress` and the narrative says who ended the mediation).

    `no_session_reason` only matters without a session (MED-144 clauses S2/S3/S4).
    """
    dispute_id = _token("dispute_id", dispute_id)
    final_status = _token("final_status", final_status)
    if not 0 <= outbound_party_messages <= 2:
        raise TextError("outbound party messages must be 0, 1 or 2")
    if classification is None:
        classification_line = f"Classification: {NO_CLASSIFICATION_MARKER}"
        classification_clause = "No classification was recorded."
    else:
        label = _token("classification", classification.label)
        confidence = _confidence(classification.confidence)
        classification_line = f"Classification: {label} (confidence {confidence})"
        classification_clause = (
            f"The last recorded classification was {label} with confidence {confidence}."
        )
    session_value = (
        NO_SESSION_MARKER if session is None else _token("session_id", session.session_id)
    )
    narrative = " ".join(
        (
            (
                f"A human solver took the dispute over from mediation (status {final_status})."
                if taken_over
                else f"The dispute was closed outside mediation with final status {final_status}."
            ),
            _session_clause(session, no_session_reason),
            classification_clause,
            _OUTBOUND_CLAUSES[outbound_party_messages],
        )
    )
    body = _body(
        RESOLUTION_REPORT_VERSION,
        f"Dispute: {dispute_id}",
        f"Session: {session_value}",
        classification_line,
        f"Outbound party messages: {outbound_party_messages}",
        f"Final dispute status: {final_status}",
        "",
        narrative,
    )
    return ResolutionReport(body=body, narrative=narrative)
