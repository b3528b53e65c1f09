"""The runit service directory (BEY-13): `run`, `log/run` and `check` are executable POSIX
sh; `run` and `log/run` `exec` chpst with the documented user, env directory, working
directory and program (`check` is exercised in tests/ops/test_health_check.py).

A fake `chpst` first on PATH records its arguments, working directory and pid; the pid must
be the one the script started with, which proves the script replaced itself (`exec`) so runsv
signals the daemon directly. Where runit's real chpst is installed and we are root, `run` also
goes through it to a stand-in daemon: the root-only env directory is read before the switch
to the unprivileged user.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.deploy.chpst import CHECK, LOG_RUN, RUN, fake_chpst_env

TIMEOUT_S = 10


def run_with_fake_chpst(script: Path, tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    """Run `script` with a recording chpst first on PATH; (script pid, recorded lines)."""
    chpst_env = fake_chpst_env(tmp_path)
    process = subprocess.Popen([str(script)], env={**chpst_env, **env})
    assert process.wait(TIMEOUT_S) == 0
    return process.pid, Path(chpst_env["CHPST_RECORD"]).read_text().splitlines()


@pytest.mark.parametrize("script", [RUN, LOG_RUN, CHECK], ids=["run", "log/run", "check"])
def test_scripts_are_executable_posix_sh(script: Path) -> None:
    mode = script.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXGRP and mode & stat.S_IXOTH
    assert script.read_text().startswith("#!/bin/sh\n")
    checked = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_run_execs_serbero_as_serbero_with_the_env_dir_in_its_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    pid, record = run_with_fake_chpst(RUN, tmp_path, SERBERO_SV_HOME=str(state))
    assert record == [
        str(pid),
        str(state),
        "-u",
        "serbero",
        "-e",
        "/etc/serbero/env",
        "/opt/serbero/bin/serbero",
    ]


def test_run_defaults_to_var_lib_serbero(tmp_path: Path) -> None:
    text = RUN.read_text()
    assert "SERBERO_SV_HOME=${SERBERO_SV_HOME:-/var/lib/serbero}" in text
    assert 'cd "$SERBERO_SV_HOME" || exit 1' in text


def test_run_stops_before_chpst_without_its_state_dir(tmp_path: Path) -> None:
    chpst_env = fake_chpst_env(tmp_path)
    record = Path(chpst_env["CHPST_RECORD"])
    result = subprocess.run(
        [str(RUN)],
        env={**chpst_env, "SERBERO_SV_HOME": str(tmp_path / "missing")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode != 0
    assert not record.exists()
    # stderr already joins stdout, so runsv's log service would get the complaint.
    assert "missing" in result.stdout
    assert result.stderr == ""


def test_log_run_execs_svlogd_with_timestamps_into_var_log_serbero(tmp_path: Path) -> None:
    pid, record = run_with_fake_chpst(LOG_RUN, tmp_path)
    assert record[0] == str(pid)
    assert record[2:] == ["-u", "serbero-log", "svlogd", "-tt", "/var/log/serbero"]


@pytest.mark.skipif(
    shutil.which("chpst") is None or os.geteuid() != 0,
    reason="needs runit's chpst and root to switch users",
)
def test_run_through_real_chpst_reads_root_only_env_dir_then_drops_to_the_user() -> None:
    # Not pytest's tmp_path: its parents are root-only and `nobody` must reach the files.
    with tempfile.TemporaryDirectory() as tmp:
        _run_through_real_chpst(Path(tmp))


def _run_through_real_chpst(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    env_dir = tmp_path / "env"
    env_dir.mkdir(mode=0o700)
    (env_dir / "SERBERO_CONFIG").write_text("/etc/serbero/config.toml\n")
    (env_dir / "SERBERO_PRIVATE_KEY").write_text("not-a-real-key\n")
    for entry in env_dir.iterdir():
        entry.chmod(0o600)
    daemon = tmp_path / "serbero"
    daemon.write_text(
        "#!/bin/sh\n"
        'printf \'{"user": "%s", "cwd": "%s", "config": "%s", "key_set": "%s"}\' '
        '"$(id -un)" "$(pwd)" "$SERBERO_CONFIG" "${SERBERO_PRIVATE_KEY:+yes}" > report.json\n'
    )
    daemon.chmod(0o755)
    result = subprocess.run(
        [str(RUN)],
        env={
            "PATH": os.environ["PATH"],
            "SERBERO_SV_USER": "nobody",
            "SERBERO_SV_ENV_DIR": str(env_dir),
            "SERBERO_SV_HOME": str(state),
            "SERBERO_SV_BIN": str(daemon),
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout
    report = json.loads((state / "report.json").read_text())
    assert report == {
        "user": "nobody",
        "cwd": str(state),
        "config": "/etc/serbero/config.toml",
        "key_set": "yes",
    }


VERDICT_CHPST = """#!/bin/sh
cat "$FAKE_VERDICT_FILE"
exit 1
"""


def test_check_says_why_once_per_sv_command_not_once_per_poll(tmp_path: Path) -> None:
    """sv runs ./check about twice a second for up to 7 s, all from one sv process: the
    same verdict is printed once for that process, a new one when it changes, and again for
    the next sv command."""
    verdict = tmp_path / "verdict"
    env = {
        **fake_chpst_env(tmp_path, VERDICT_CHPST),
        "FAKE_VERDICT_FILE": str(verdict),
        "SERBERO_SV_HOME": str(tmp_path),
        "SERBERO_SV_CHECK_STATE": str(tmp_path / "check.last"),
    }

    def polls(*verdicts: str) -> tuple[list[int], str]:
        """One parent (like one `sv check`) running ./check once per verdict."""
        script = 'for line in "$@"; do printf "%s\\n" "$line" > "$FAKE_VERDICT_FILE"; '
        script += '"$CHECK" 2>&1; echo "status $?"; done'
        result = subprocess.run(
            ["sh", "-c", script, "sh", *verdicts],
            env={**env, "CHECK": str(CHECK)},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        lines = result.stdout.splitlines()
        statuses = [int(line.split()[1]) for line in lines if line.startswith("status ")]
        said = "".join(f"{line}\n" for line in lines if not line.startswith("status "))
        return statuses, said

    down = "down: HTTP 503, 0 of 1 relays connected"
    refused = "unreachable: http://127.0.0.1:9797/health: [Errno 111] Connection refused"
    assert polls(down, down, down, down) == ([1, 1, 1, 1], f"{down}\n")
    assert polls(refused, refused, down, down) == ([1, 1, 1, 1], f"{refused}\n{down}\n")
    assert polls(down) == ([1], f"{down}\n")
