"""The Quick-start demo end to end: relay, the real daemon, simulated Mostro and solvers.

Runs `python -m demo.run --duration` as a subprocess (as `python3 dev.py demo` does, minus Ctrl-C)
and reads what it printed: a solver must have decrypted Serbero's DM about a dispute the
simulated Mostro opened, the daemon must stop cleanly on SIGTERM and the temporary directory
must be gone.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from demo.run import Console

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Long enough for the first dispute's DMs (they arrive well within a second), short enough to
# keep the suite quick.
DURATION_S = 8
TIMEOUT_S = 60

OPENED = re.compile(r"^\[ *[\d.]+s\] mostro +opens dispute ([0-9a-f]{8})…", re.MULTILINE)
DM = re.compile(
    r"^\[ *[\d.]+s\] (alice|bob|carol) +<- DM from serbero\n((?: +\| .*\n)+)", re.MULTILINE
)
DISPUTE_LINE = re.compile(r"\| dispute_id: ([0-9a-f-]{36})$", re.MULTILINE)
WORKDIR = re.compile(r"^  workdir +(\S+)", re.MULTILINE)


def test_demo_solvers_receive_dms_for_disputes_mostro_opened() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "demo.run", "--duration", str(DURATION_S)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=TIMEOUT_S,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output + result.stderr

    opened = set(OPENED.findall(output))
    assert opened, output
    notified = {
        (solver, dispute_id)
        for solver, body in DM.findall(output)
        for dispute_id in DISPUTE_LINE.findall(body)
    }
    assert any(dispute_id[:8] in opened for _, dispute_id in notified), output
    # The first dispute reaches every solver, not just one.
    first = min(notified, key=lambda pair: output.index(pair[1]))[1]
    assert {solver for solver, d in notified if d == first} == {"alice", "bob", "carol"}, output

    assert re.search(r"serbero \(pid \d+\) exited with status 0", output), output
    [workdir] = WORKDIR.findall(output)
    assert not Path(workdir).exists()


def test_the_demo_prints_relay_and_daemon_text_escaped() -> None:
    """What the demo prints came from a relay or the daemon's log: shown escaped (BEY-28)."""
    stream = io.StringIO()
    console = Console(stream)
    console.line("mostro", "opens dispute \x1b[2J\x07", "dm row \u202eevil\nsecond \x9b row")
    printed = stream.getvalue()
    assert all(ch.isprintable() or ch == "\n" for ch in printed)
    assert "opens dispute \\x1b[2J\\x07" in printed
    assert "| dm row \\u202eevil\n" in printed
    assert "| second \\x9b row" in printed
