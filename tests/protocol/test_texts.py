"""Solver-facing bodies: exact machine lines (CORE-41, BEY-5), privacy (CORE-40), BEY-21."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from serbero.protocol.dispute_event import Dispute, DisputeStatus, parse_dispute_event
from serbero.protocol.event import Event
from serbero.protocol.texts import (
    NO_CLASSIFICATION_MARKER,
    NO_SESSION_MARKER,
    ReportClassification,
    ReportSession,
    ResolutionReport,
    TextError,
    assignment_notification,
    dispute_escalation_notice,
    handoff_prose,
    initial_notification,
    is_line_safe,
    mediation_resolution_report,
    renotification,
    resolution_notice,
    session_escalation_notice,
    summary_notice,
)

HOSTILE_VALUES = ["a\nb", "a\rb", "a\x00", "\x7f", "a\u2028b", "a\u2029", "a\x85b", "a\x1bb"]


def resolution_report(**overrides: Any) -> ResolutionReport:
    """A report for a dispute with no mediation context, but for `overrides`."""
    arguments: dict[str, Any] = {
        "dispute_id": "d-1",
        "final_status": "settled",
        "session": None,
        "classification": None,
        "outbound_party_messages": 0,
    }
    return mediation_resolution_report(**{**arguments, **overrides})


@pytest.fixture(scope="module")
def derived(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (vectors_dir / "serbero-protocol.derived.vectors.json").read_text(encoding="utf-8")
    )
    return data


@pytest.fixture(scope="module")
def dispute(derived: dict[str, Any]) -> Dispute:
    event = msgspec.convert(derived["event_id_dispute_38386"]["event"], Event)
    return parse_dispute_event(event)


def _lines(body: str) -> list[str]:
    assert not body.endswith("\n")
    return body.split("\n")


def _party_keys(derived: dict[str, Any]) -> list[str]:
    return [derived["keys"][name]["pubkey"] for name in ("buyer_trade", "seller_trade")]


# --- core bodies --------------------------------------------------------------------------


def test_initial_notification(dispute: Dispute, derived: dict[str, Any]) -> None:
    lines = _lines(initial_notification(dispute))
    event = derived["event_id_dispute_38386"]["event"]
    assert len(lines) == 5
    assert lines[0]
    assert lines[1:] == [
        f"dispute_id: {dispute.dispute_id}",
        "initiator: buyer",
        f"event_timestamp: {event['created_at']}",
        "status: initiated",
    ]
    body = "\n".join(lines)
    assert not any(key in body for key in _party_keys(derived))
    assert event["pubkey"] not in body


def test_initial_notification_needs_an_initiated_dispute(dispute: Dispute) -> None:
    with pytest.raises(TextError):
        initial_notification(msgspec.structs.replace(dispute, status=DisputeStatus.SETTLED))
    with pytest.raises(TextError):
        initial_notification(msgspec.structs.replace(dispute, initiator="unknown"))


def test_renotification() -> None:
    lines = _lines(renotification("d-1", now=1_700_003_600, event_timestamp=1_700_000_000))
    assert len(lines) == 4
    assert lines[1:] == [
        "dispute_id: d-1",
        "lifecycle_state: notified",
        "time_elapsed_seconds: 3600",
    ]


@pytest.mark.parametrize(("solver", "shown"), [(None, "unknown"), ("ab" * 32, "ab" * 32)])
def test_assignment_notification(solver: str | None, shown: str) -> None:
    lines = _lines(assignment_notification("d-1", solver))
    assert len(lines) == 4
    assert lines[1:] == ["dispute_id: d-1", f"assigned_solver: {shown}", "lifecycle_state: taken"]


@pytest.mark.parametrize("status", ["seller-refunded", "settled", "released"])
def test_resolution_notice(status: str) -> None:
    """BEY-5: short closing notice with machine-parsable lines."""
    lines = _lines(resolution_notice("d-1", status))
    assert len(lines) == 4
    assert lines[1:] == ["dispute_id: d-1", f"status: {status}", "lifecycle_state: resolved"]


@pytest.mark.parametrize("status", ["initiated", "in-progress", "closed", ""])
def test_resolution_notice_needs_a_resolution_status(status: str) -> None:
    with pytest.raises(TextError):
        resolution_notice("d-1", status)


def test_headlines_differ_per_body(dispute: Dispute) -> None:
    heads = {
        initial_notification(dispute).split("\n")[0],
        renotification("d", 1, 0).split("\n")[0],
        assignment_notification("d", None).split("\n")[0],
        resolution_notice("d", "settled").split("\n")[0],
    }
    assert len(heads) == 4


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_hostile_values_are_refused(value: str, dispute: Dispute) -> None:
    """BEY-21: a newline or control character never reaches a line-based body."""
    with pytest.raises(TextError):
        initial_notification(msgspec.structs.replace(dispute, dispute_id=value))
    with pytest.raises(TextError):
        renotification(value, 1, 0)
    with pytest.raises(TextError):
        assignment_notification(value, None)
    with pytest.raises(TextError):
        assignment_notification("d-1", value)
    with pytest.raises(TextError):
        resolution_notice(value, "settled")
    with pytest.raises(TextError):
        handoff_prose(value, "round_limit")
    with pytest.raises(TextError):
        handoff_prose("d-1", value)
    with pytest.raises(TextError):
        session_escalation_notice(value, "d-1", "round_limit")
    with pytest.raises(TextError):
        dispute_escalation_notice("d-1", value)


def test_empty_ids_are_refused() -> None:
    with pytest.raises(TextError):
        renotification("", 1, 0)
    with pytest.raises(TextError):
        assignment_notification("d-1", "")


def test_line_safety_classes() -> None:
    assert is_line_safe("1f6d3d2e-9a4b-4c1e-8f3a-2b7c5d9e0a11 caf\u00e9 \U0001f600")
    assert not any(is_line_safe(value) for value in HOSTILE_VALUES)


# --- mediation notices --------------------------------------------------------------------


def test_escalation_lines_are_single_lines_with_the_trigger_literal() -> None:
    a = session_escalation_notice("s-1", "d-1", "round_limit")
    b = dispute_escalation_notice("d-1", "fraud_indicator")
    assert "\n" not in a and "\n" not in b
    assert "s-1" in a and "d-1" in a and "trigger: round_limit" in a
    assert "d-1" in b and "trigger: fraud_indicator" in b


def test_dispute_escalation_notice_says_no_session_and_human_judgment() -> None:
    notice = dispute_escalation_notice("d-1", "fraud_indicator")
    for element in ("unsuitable for mediation", "no session was opened", "human judgment"):
        assert element in notice
    assert "human judgment is needed" in session_escalation_notice("s-1", "d-1", "round_limit")


def test_summary_notice_layout() -> None:
    """MED-113: summary, blank line, the labelled one-line step."""
    body = summary_notice("Both agree the fiat\narrived late.", "Release after checking.")
    assert body == (
        "Both agree the fiat\narrived late.\n\nSuggested next step: Release after checking."
    )


@pytest.mark.parametrize("step", ["a\nb", "a\r\n\tb", "a\u2028b", "  a \x1b b  "])
def test_summary_notice_folds_the_step_onto_one_line(step: str) -> None:
    body = summary_notice("Summary.", step)
    last = body.split("\n")[-1]
    assert last == "Suggested next step: a b"
    assert body.count("\n") == 2


@pytest.mark.parametrize(("text", "step"), [("", "x"), ("  \n", "x"), ("x", ""), ("x", "\n\t")])
def test_summary_notice_refuses_blank_parts(text: str, step: str) -> None:
    with pytest.raises(TextError):
        summary_notice(text, step)


def test_handoff_prose_elements() -> None:
    prose = handoff_prose("d-1", "round_limit")
    assert "\n" not in prose
    for element in ("d-1", "round_limit", "TakeDispute", "Serbero's mediation assistance system"):
        assert element in prose


# --- mediation_resolution_report/v1 -------------------------------------------------------


def test_resolution_report_with_session_and_classification() -> None:
    report = mediation_resolution_report(
        dispute_id="d-1",
        final_status="settled",
        session=ReportSession(session_id="s-1", state="awaiting_response"),
        classification=ReportClassification(
            label="coordination_failure_resolvable", confidence=0.875
        ),
        outbound_party_messages=2,
    )
    lines = _lines(report.body)
    assert lines == [
        "mediation_resolution_report/v1",
        "Dispute: d-1",
        "Session: s-1",
        "Classification: coordination_failure_resolvable (confidence 0.88)",
        "Outbound party messages: 2",
        "Final dispute status: settled",
        "",
        report.narrative,
    ]
    for part in ("settled", "s-1", "awaiting_response", "coordination_failure_resolvable", "0.88"):
        assert part in report.narrative
    assert "\n" not in report.narrative


@pytest.mark.parametrize("reason", ["take_failed", "escalated_before_take", "none"])
def test_resolution_report_without_session_or_classification(reason: Any) -> None:
    report = resolution_report(final_status="seller-refunded", no_session_reason=reason)
    lines = _lines(report.body)
    assert (
        lines[2]
        == "Session: <none \u2014 dispute-scoped handoff>"
        == f"Session: {NO_SESSION_MARKER}"
    )
    assert (
        lines[3]
        == "Classification: <none recorded>"
        == f"Classification: {NO_CLASSIFICATION_MARKER}"
    )
    assert lines[4] == "Outbound party messages: 0"


def test_resolution_report_narratives_differ_by_clause() -> None:
    variants = {
        resolution_report(no_session_reason="take_failed").narrative,
        resolution_report(no_session_reason="escalated_before_take").narrative,
        resolution_report().narrative,
        resolution_report(outbound_party_messages=1).narrative,
        resolution_report(outbound_party_messages=2).narrative,
    }
    assert len(variants) == 5


@pytest.mark.parametrize("count", [-1, 3])
def test_resolution_report_outbound_count_range(count: int) -> None:
    with pytest.raises(TextError):
        resolution_report(outbound_party_messages=count)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_resolution_report_refuses_non_finite_confidence(value: float) -> None:
    with pytest.raises(TextError):
        resolution_report(classification=ReportClassification(label="x", confidence=value))


@pytest.mark.parametrize("value", HOSTILE_VALUES)
def test_resolution_report_refuses_hostile_values(value: str) -> None:
    for kwargs in (
        {"dispute_id": value},
        {"final_status": value},
        {"session": ReportSession(session_id=value, state="closed")},
        {"session": ReportSession(session_id="s-1", state=value)},
        {"classification": ReportClassification(label=value, confidence=0.5)},
    ):
        with pytest.raises(TextError):
            resolution_report(**kwargs)


def test_takeover_report_names_the_human_solver() -> None:
    """Q-6: the report after a human's take says so; its labelled lines are unchanged."""
    report = resolution_report(final_status="in-progress", taken_over=True)
    assert report.narrative.startswith("A human solver took the dispute over from mediation")
    assert "Final dispute status: in-progress" in report.body.split("\n")
    assert "closed outside mediation" in resolution_report().narrative


# --- properties ---------------------------------------------------------------------------


@given(st.text(), st.text(), st.integers(), st.integers())
def test_property_bodies_keep_their_shape_or_raise_text_error(
    a: str, b: str, now: int, ts: int
) -> None:
    renderers: list[tuple[Callable[[], str], int]] = [
        (lambda: renotification(a, now, ts), 4),
        (lambda: assignment_notification(a, b), 4),
        (lambda: resolution_notice(a, b), 4),
        (lambda: handoff_prose(a, b), 1),
        (lambda: session_escalation_notice(a, b, "round_limit"), 1),
        (lambda: dispute_escalation_notice(a, b), 1),
        (
            lambda: (
                mediation_resolution_report(
                    dispute_id=a,
                    final_status="settled",
                    session=ReportSession(session_id=b, state="closed"),
                    classification=ReportClassification(label=b, confidence=0.5),
                    outbound_party_messages=1,
                ).body
            ),
            8,
        ),
    ]
    for render, line_count in renderers:
        try:
            body = render()
        except TextError:
            continue
        assert len(body.split("\n")) == line_count
