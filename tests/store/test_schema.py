"""Schema identity with the reference (CORE-58..60), migrations (CORE-59, AS-12), connection."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import apsw
import pytest
from structlog.testing import capture_logs

from serbero.store.connection import connect, open_database, open_readonly
from serbero.store.errors import StoreFailure
from serbero.store.migrations import SchemaStatus, apply_version, migrate, read_schema_version
from serbero.store.schema import REFERENCE_SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION_DDL
from tests.store.helpers import MOSTRO, count, master, one, rows, table_structure, tables
from tests.store.reference_schema import build_reference

OUR_TABLES = {
    "notification_outbox",
    "serbero_relay_health",
    "serbero_daemon_health",
    "serbero_rationale_occurrences",
    "serbero_session_trade_keys",
    "serbero_outbound_wraps",
}


def reference_db(upto: int = REFERENCE_SCHEMA_VERSION) -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    build_reference(conn, upto)
    return conn


def ours_at(version: int) -> apsw.Connection:
    conn = connect(":memory:")
    conn.execute(SCHEMA_VERSION_DDL)
    for number in range(1, version + 1):
        apply_version(conn, number)
    return conn


def test_our_v5_is_the_reference_v5_exactly() -> None:
    ref, ours = reference_db(), ours_at(REFERENCE_SCHEMA_VERSION)
    assert tables(ours) == tables(ref)
    assert master(ours) == master(ref)
    for table in tables(ref):
        assert table_structure(ours, table) == table_structure(ref, table), table


def test_our_versions_only_add_tables_and_prefixed_indexes() -> None:
    ref, ours = reference_db(), ours_at(SCHEMA_VERSION)
    assert set(tables(ours)) - set(tables(ref)) == OUR_TABLES
    ref_master, our_master = master(ref), master(ours)
    assert {name: our_master[name] for name in ref_master} == ref_master
    for name in set(our_master) - set(ref_master):
        assert name in OUR_TABLES or name.startswith(("serbero_", "sqlite_autoindex_serbero_"))
    for table in tables(ref):
        theirs, mine = table_structure(ref, table), table_structure(ours, table)
        assert mine["columns"] == theirs["columns"], table
        assert mine["foreign_keys"] == theirs["foreign_keys"], table
        extra = set(mine["indexes"]) - set(theirs["indexes"])
        assert {n: mine["indexes"][n] for n in theirs["indexes"]} == theirs["indexes"]
        assert all(name.startswith("serbero_") for name in extra), extra


def test_migration_from_empty_reaches_latest(conn: apsw.Connection) -> None:
    assert read_schema_version(conn) == SCHEMA_VERSION
    assert rows(conn, "SELECT version FROM schema_version ORDER BY version") == [
        (v,) for v in range(1, SCHEMA_VERSION + 1)
    ]
    assert count(conn, "disputes") == 0


def test_double_run_is_a_no_op(conn: apsw.Connection) -> None:
    before = master(conn)
    assert migrate(conn) == SchemaStatus(found=SCHEMA_VERSION, current=SCHEMA_VERSION)
    assert migrate(conn) == SchemaStatus(found=SCHEMA_VERSION, current=SCHEMA_VERSION)
    assert master(conn) == before
    assert count(conn, "schema_version") == SCHEMA_VERSION


def _fill(conn: apsw.Connection, version: int) -> None:
    """Rows a reference daemon at `version` could have written."""
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " event_timestamp, detected_at) VALUES ('old-1', 'ev-old-1', ?, 'buyer', 1000, 1001)",
        (MOSTRO,),
    )
    conn.execute(
        "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status)"
        " VALUES ('old-1', 'solver', 1002, 'sent')"
    )
    if version >= 2:
        conn.execute(
            "UPDATE disputes SET lifecycle_state = 'notified', last_notified_at = 1002"
            " WHERE dispute_id = 'old-1'"
        )
        conn.execute(
            "INSERT INTO dispute_state_transitions (dispute_id, from_state, to_state,"
            " transitioned_at, trigger) VALUES ('old-1', 'new', 'notified', 1002,"
            " 'initial_notification')"
        )
    if version >= 3:
        conn.execute(
            "INSERT INTO mediation_sessions (session_id, dispute_id, state, prompt_bundle_id,"
            " policy_hash, started_at, last_transition_at) VALUES ('s-1', 'old-1',"
            " 'awaiting_response', 'phase3-default', 'h1', 1003, 1003)"
        )
        conn.execute(
            "INSERT INTO mediation_events (session_id, kind, payload_json, occurred_at)"
            " VALUES ('s-1', 'handoff_prepared', '{\"dispute_id\":\"old-1\"}', 1004)"
        )
    if version >= 5:
        conn.execute(
            "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, session_id,"
            " handoff_event_id, target_solver, dispatched_at, created_at) VALUES"
            " ('x-1', 'old-1', 's-1', 1, 'solver', 1005, 1005)"
        )


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_upgrade_from_reference_version_keeps_rows(version: int, db_path: str) -> None:
    ref = apsw.Connection(db_path)
    build_reference(ref, version)
    _fill(ref, version)
    ref.close()

    conn, status = open_database(db_path)
    assert status == SchemaStatus(found=version, current=SCHEMA_VERSION)
    assert one(conn, "SELECT event_id FROM disputes WHERE dispute_id = 'old-1'") == "ev-old-1"
    assert count(conn, "notifications", "notif_type = 'initial'") == 1
    expected_state = "notified" if version >= 2 else "new"
    assert one(conn, "SELECT lifecycle_state FROM disputes") == expected_state
    if version >= 3:
        assert rows(
            conn,
            "SELECT round_count_last_evaluated, consecutive_eval_failures FROM mediation_sessions",
        ) == [(0, 0)]
    fresh = ours_at(SCHEMA_VERSION)
    assert master(conn) == master(fresh)
    for table in tables(fresh):
        assert table_structure(conn, table) == table_structure(fresh, table), table
    assert migrate(conn) == SchemaStatus(found=SCHEMA_VERSION, current=SCHEMA_VERSION)
    conn.close()


def test_columns_already_present_are_not_added_twice() -> None:
    conn = reference_db(1)
    conn.execute("ALTER TABLE disputes ADD COLUMN lifecycle_state TEXT NOT NULL DEFAULT 'new'")
    assert migrate(conn).current == SCHEMA_VERSION
    names = [r[1] for r in conn.execute("PRAGMA table_info(disputes)")]
    assert names.count("lifecycle_state") == 1


def test_a_newer_schema_is_used_as_is_with_a_warning() -> None:
    conn = ours_at(SCHEMA_VERSION)
    conn.execute("INSERT INTO schema_version (version) VALUES (99)")
    before = master(conn)
    with capture_logs() as logs:
        status = migrate(conn)
    assert status == SchemaStatus(found=99, current=99)
    assert master(conn) == before
    warnings = [e for e in logs if e["event"] == "schema_newer_than_supported"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert (warnings[0]["found"], warnings[0]["supported"]) == (99, SCHEMA_VERSION)


def test_a_failing_version_commits_nothing_of_itself(db_path: str) -> None:
    ref = apsw.Connection(db_path)
    build_reference(ref, 5)
    # An object squatting on a name v6 creates makes v6 fail half-way through.
    ref.execute("CREATE TABLE serbero_idx_outbox_pair (x)")
    ref.close()
    with pytest.raises(StoreFailure):
        open_database(db_path)
    check = apsw.Connection(db_path)
    assert read_schema_version(check) == 5
    assert "notification_outbox" not in tables(check)


def test_unreadable_schema_version_is_fatal_not_zero() -> None:
    conn = apsw.Connection(":memory:")
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY)")
    conn.execute("DROP TABLE schema_version")
    conn.execute("CREATE VIEW schema_version AS SELECT 1 AS other_column")
    with pytest.raises(StoreFailure):
        migrate(conn)


def _dispatch(conn: apsw.Connection, dispatch_id: str, handoff: int, status: str) -> None:
    conn.execute(
        "INSERT INTO escalation_dispatches (dispatch_id, dispute_id, handoff_event_id,"
        " target_solver, dispatched_at, created_at, status) VALUES (?, 'd', ?, 's', 1, 1, ?)",
        (dispatch_id, handoff, status),
    )


@pytest.fixture
def with_handoffs(conn: apsw.Connection) -> apsw.Connection:
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " event_timestamp, detected_at) VALUES ('d', 'e', 'm', 'buyer', 1, 1)"
    )
    for _ in range(2):
        conn.execute(
            "INSERT INTO mediation_events (kind, payload_json, occurred_at)"
            " VALUES ('handoff_prepared', '{}', 1)"
        )
    return conn


def test_check_rejects_an_unknown_dispatch_status(with_handoffs: apsw.Connection) -> None:
    with pytest.raises(apsw.ConstraintError, match="CHECK"):
        _dispatch(with_handoffs, "x", 1, "delivered")
    _dispatch(with_handoffs, "x", 1, "send_failed")


def test_unique_index_rejects_a_second_dispatch_per_handoff(
    with_handoffs: apsw.Connection,
) -> None:
    _dispatch(with_handoffs, "x", 1, "dispatched")
    with pytest.raises(apsw.ConstraintError, match="UNIQUE"):
        _dispatch(with_handoffs, "y", 1, "dispatched")
    _dispatch(with_handoffs, "y", 2, "dispatched")


def test_foreign_keys_reject_orphans(with_handoffs: apsw.Connection) -> None:
    conn = with_handoffs
    with pytest.raises(apsw.ConstraintError, match="FOREIGN KEY"):
        conn.execute(
            "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status)"
            " VALUES ('nope', 's', 1, 'sent')"
        )
    with pytest.raises(apsw.ConstraintError, match="FOREIGN KEY"):
        _dispatch(conn, "x", 77, "dispatched")
    with pytest.raises(apsw.ConstraintError, match="FOREIGN KEY"):
        conn.execute(
            "INSERT INTO notification_outbox (dispute_id, solver_pubkey, notif_type, body,"
            " cause, created_at, next_attempt_at) VALUES ('nope', 's', 'initial', 'b', 'c', 1, 1)"
        )


def test_outbox_state_is_checked(with_handoffs: apsw.Connection) -> None:
    with pytest.raises(apsw.ConstraintError, match="CHECK"):
        with_handoffs.execute(
            "INSERT INTO notification_outbox (dispute_id, solver_pubkey, notif_type, body,"
            " cause, created_at, next_attempt_at, state)"
            " VALUES ('d', 's', 'initial', 'b', 'c', 1, 1, 'sending')"
        )


def test_default_notif_type_is_initial(with_handoffs: apsw.Connection) -> None:
    with_handoffs.execute(
        "INSERT INTO notifications (dispute_id, solver_pubkey, sent_at, status)"
        " VALUES ('d', 's', 1, 'sent')"
    )
    assert one(with_handoffs, "SELECT notif_type FROM notifications") == "initial"


def test_connection_pragmas(conn: apsw.Connection) -> None:
    assert one(conn, "PRAGMA journal_mode") == "wal"
    assert one(conn, "PRAGMA synchronous") == 2
    assert one(conn, "PRAGMA foreign_keys") == 1
    assert one(conn, "PRAGMA busy_timeout") >= 5000


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_database_files_are_owner_only(db_path: str) -> None:
    old_umask = os.umask(0o022)
    try:
        conn, _ = open_database(db_path)
    finally:
        os.umask(old_umask)
    assert _mode(db_path) == 0o600
    assert _mode(db_path + "-wal") == 0o600
    assert _mode(db_path + "-shm") == 0o600
    conn.close()


def test_an_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "existing.db"
    path.touch(mode=0o640)
    os.chmod(path, 0o640)
    conn, _ = open_database(str(path))
    conn.close()
    assert _mode(str(path)) == 0o640


def test_open_failure_is_a_store_failure(tmp_path: Path) -> None:
    with pytest.raises(StoreFailure):
        open_database(str(tmp_path / "no-such-dir" / "x.db"))


def test_readonly_reads_beside_the_writer_and_never_writes(
    conn: apsw.Connection, db_path: str
) -> None:
    conn.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " event_timestamp, detected_at) VALUES ('d', 'e', 'm', 'buyer', 1, 1)"
    )
    reader = open_readonly(db_path)
    assert count(reader, "disputes") == 1
    with pytest.raises(apsw.ReadOnlyError):
        reader.execute("DELETE FROM disputes")
    reader.close()


def test_readonly_opens_after_the_daemon_closed(db_path: str) -> None:
    writer, _ = open_database(db_path)
    writer.execute(
        "INSERT INTO disputes (dispute_id, event_id, mostro_pubkey, initiator_role,"
        " event_timestamp, detected_at) VALUES ('d', 'e', 'm', 'buyer', 1, 1)"
    )
    writer.close()
    reader = open_readonly(db_path)
    assert count(reader, "disputes") == 1
    reader.close()


def test_readonly_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreFailure):
        open_readonly(str(missing))
    assert not missing.exists()
