"""The Quick-start demo end to end: relay, the real daemon with mediation on, simulated
Mostro, the scripted model, the parties and the solvers.

Runs `python -m demo.run --duration` as a subprocess (as `python3 dev.py demo` does, minus
Ctrl-C) and reads what it printed: every solver must have decrypted Serbero's DM about the
first dispute the simulated Mostro opened; Serbero must have asked that dispute's parties
the model's questions on the dispute chat and they must have answered; the daemon must stop
cleanly on SIGTERM and the temporary directory must be gone.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from demo.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Long enough for the first dispute's DMs and its parties' answers (within about two seconds
# of its opening), short enough to keep the suite quick.
DURATION_S = 8
TIMEOUT_S = 60

STAMP = r"^\[ *[\d.]+s\] "
OPENED = re.compile(STAMP + r"mostro +opens dispute ([0-9a-f]{8})…", re.MULTILINE)
DM = re.compile(
    STAMP + r"(alice|bob|carol) +<- DM #(\d+) from serbero\n((?: +\| .*\n)+)", re.MULTILINE
)
SAME_DM = re.compile(
    STAMP + r"(alice|bob|carol) +<- DM #(\d+) from serbero \(as (?:alice|bob|carol)\)$",
    re.MULTILINE,
)
DISPUTE_LINE = re.compile(r"\| dispute_id: ([0-9a-f-]{36})$", re.MULTILINE)
WORKDIR = re.compile(r"^  workdir +(\S+)", re.MULTILINE)


def test_demo_solvers_receive_dms_and_serbero_mediates_with_the_parties() -> None:
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

    opened = OPENED.findall(output)
    assert opened, output
    disputes_of = {number: DISPUTE_LINE.findall(body) for _, number, body in DM.findall(output)}
    received = [(solver, number) for solver, number, _ in DM.findall(output)]
    received += SAME_DM.findall(output)
    notified = {(solver, d) for solver, number in received for d in disputes_of[number]}
    # The first dispute reaches every solver, not just one.
    first = opened[0]
    assert {solver for solver, d in notified if d.startswith(first)} == {"alice", "bob", "carol"}
    # Serbero mediates it: the model's question reaches each party, who answers.
    assert re.search(STAMP + f"model +classify {first}…: ask each party a question$", output, re.M)
    for party in ("buyer", "seller"):
        asked = STAMP + f"{party} +<- chat from serbero \\({first}…\\)\n +\\| {party.title()}: "
        assert re.search(asked, output, re.MULTILINE), output
        assert re.search(STAMP + f"{party} +-> chat to serbero \\({first}…\\)$", output, re.M)

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
