"""Operator views never leave a file beside the database (BEY-10, BEY-23).

A WAL database read-only opened by SQLite gets `-wal`/`-shm` files created when a stopped
daemon left none; made by the operator, they may be files the daemon's user cannot open.
Tried as the current user, as root over a database the service user owns, and as an
unprivileged user over a root-owned one (the last two when the host allows switching users).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from serbero.cli import main
from serbero.store.connection import open_database, open_readonly
from serbero.store.health import KEY_HEARTBEAT_AT, write_health

SERBERO_SCRIPT: Final = Path(sys.executable).parent / "serbero"
SERVICE_USER: Final = "nobody"
SETPRIV: Final = shutil.which("setpriv")
REPO_ROOT: Final = Path(__file__).resolve().parents[2]


def make_stopped_database(directory: Path) -> Path:
    """A WAL database as a cleanly stopped daemon leaves it: the main file alone."""
    path = directory / "serbero.db"
    conn, _ = open_database(str(path))
    conn.close()
    assert sorted(p.name for p in directory.iterdir()) == ["serbero.db"]
    return path


def test_a_stopped_database_is_read_without_creating_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = make_stopped_database(tmp_path)
    for command in (["status"], ["disputes"], ["show", "none"]):
        main([*command, "--db", str(db)])
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serbero.db"]


def test_a_live_database_is_read_through_its_wal(tmp_path: Path) -> None:
    """While the daemon runs, the newest commits are in the WAL, not yet in the main file."""
    writer, _ = open_database(str(tmp_path / "serbero.db"))
    try:
        write_health(writer, relays=(), values={KEY_HEARTBEAT_AT: "12345"}, now=12345)
        reader = open_readonly(str(tmp_path / "serbero.db"))
        try:
            rows = reader.execute("SELECT value FROM serbero_daemon_health").fetchall()
        finally:
            reader.close()
    finally:
        writer.close()
    assert rows == [("12345",)]


def _as_user(user: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    assert SETPRIV is not None
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT)}
    gid = pwd.getpwnam(user).pw_gid
    command = [SETPRIV, f"--reuid={user}", f"--regid={gid}", "--clear-groups", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def _can_switch_users() -> bool:
    if SETPRIV is None or os.geteuid() != 0:
        return False
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return False
    probe = _as_user(SERVICE_USER, [sys.executable, "-c", "import serbero.cli"])
    return probe.returncode == 0


needs_users = pytest.mark.skipif(
    not _can_switch_users(),
    reason="needs root, setpriv and an interpreter the 'nobody' user can run",
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="serbero-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@needs_users
def test_root_reading_the_service_users_database_leaves_it_openable(
    shared_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the runit guide has it: the daemon runs as its user, the operator looks as root."""
    home = shared_dir / "var-lib-serbero"
    home.mkdir()
    db = make_stopped_database(home)
    service = pwd.getpwnam(SERVICE_USER)
    for path in (home, db):
        os.chown(path, service.pw_uid, service.pw_gid)
    main(["status", "--db", str(db)])
    capsys.readouterr()
    assert sorted(p.name for p in home.iterdir()) == ["serbero.db"]
    # The daemon, as its user, still opens it read-write (and makes its own WAL files).
    opened = _as_user(
        SERVICE_USER,
        [
            sys.executable,
            "-c",
            "import sys; from serbero.store.connection import open_database; "
            "open_database(sys.argv[1])[0].close()",
            str(db),
        ],
    )
    assert opened.returncode == 0, opened.stderr


@needs_users
def test_an_unprivileged_user_reads_a_stopped_database_in_a_directory_it_cannot_write(
    shared_dir: Path,
) -> None:
    """Without the immutable read SQLite fails here: it cannot create the `-shm` file."""
    db = make_stopped_database(shared_dir)
    db.chmod(0o644)
    result = _as_user(SERVICE_USER, [str(SERBERO_SCRIPT), "status", "--db", str(db)])
    assert result.returncode == 2, result.stderr
    assert "no health record" in result.stdout
    assert sorted(p.name for p in shared_dir.iterdir()) == ["serbero.db"]
