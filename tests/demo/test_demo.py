"""The Quick-start demo end to end: relay, the real daemon with mediation on, simulated
Mostro, the scripted model, the parties and the solvers.

Runs `python -m demo.run --duration` as a subprocess (as `python3 dev.py demo` does, minus
Ctrl-C) and reads what it printed: every solver must have decrypted Serbero's DM about the
first dispute the simulated Mostro opened; Serbero must have asked that dispute's parties
the model's questions on the dispute chat, they must have answered and every solver must
have the model's summary; the second dispute's parties contradict each other, so every
solver must be told it was escalated on conflicting claims and the write solver must have
the handoff; the daemon must stop cleanly on SIGTERM and the temporary directory must be
gone.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

from demo.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Long enough for the second dispute's handoff (it opens 6 s after the first; the parties
# answer, the next chat pass reads them, the next dispatcher scan sends the handoff: about
# 6 s more), short enough to keep the suite quick.
DURATION_S = 20
TIMEOUT_S = 90

STAMP = r"^\[ *[\d.]+s\] "
OPENED = re.compile(STAMP + r"mostro +opens dispute ([0-9a-f]{8})…", re.MULTILINE)
DM = re.compile(
    STAMP + r"(alice|bob|carol) +<- DM #(\d+) from serbero\n((?: +\| .*\n)+)", re.MULTILINE
)
SAME_DM = re.compile(
    STAMP + r"(alice|bob|carol) +<- DM #(\d+) from serbero \(as (?:alice|bob|carol)\)$",
    re.MULTILINE,
)
WORKDIR = re.compile(r"^  workdir +(\S+)", re.MULTILINE)
SOLVERS = {"alice", "bob", "carol"}


def _text(body: str) -> str:
    return "\n".join(line.partition("| ")[2] for line in body.splitlines())


def recipients(output: str, pattern: str) -> set[str]:
    """The solvers who received a DM whose text (the printed body without its `| ` gutter)
    matches `pattern`, printed in full or as the same DM as another solver's."""
    numbers = {
        number for _, number, body in DM.findall(output) if re.search(pattern, _text(body), re.M)
    }
    received = [(solver, number) for solver, number, _ in DM.findall(output)]
    return {solver for solver, number in received + SAME_DM.findall(output) if number in numbers}


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
    # The first dispute reaches every solver, not just one.
    first, second = opened[:2]
    assert recipients(output, f"^dispute_id: {first}") == SOLVERS, output
    # Serbero mediates both: the model's question reaches each party, who answers.
    for dispute in (first, second):
        asking = STAMP + f"model +classify {dispute}…: ask each party a question$"
        assert re.search(asking, output, re.MULTILINE), output
        for party in ("buyer", "seller"):
            asked = (
                STAMP + f"{party} +<- chat from serbero \\({dispute}…\\)\n +\\| {party.title()}: "
            )
            answered = STAMP + f"{party} +-> chat to serbero \\({dispute}…\\)$"
            assert re.search(asked, output, re.MULTILINE), output
            assert re.search(answered, output, re.MULTILINE), output
    # The first one's summary reaches every solver; the second is escalated on conflicting
    # claims: every solver is told, and the write solver (alice) gets the handoff.
    assert recipients(output, "MOSTRO-4821.*\n\nSuggested next step: ") == SOLVERS, output
    escalated = f"for dispute {second}[0-9a-f-]* stopped with trigger: conflicting_claims;"
    assert recipients(output, escalated) == SOLVERS, output
    handoff = (
        f"^escalation_handoff/v1\nDispute: {second}[0-9a-f-]*\n.*\nTrigger: conflicting_claims$"
    )
    assert recipients(output, handoff) == {"alice"}, output

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
