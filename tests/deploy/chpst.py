"""A stand-in for runit's `chpst` on PATH, for running the service scripts without runit.

It records its pid, working directory and arguments in `$CHPST_RECORD`; the pid proves that
a script `exec`ed it (runsv then signals the program directly).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

SERVICE: Final = Path(__file__).resolve().parent.parent.parent / "deploy" / "runit" / "serbero"
RUN: Final = SERVICE / "run"
LOG_RUN: Final = SERVICE / "log" / "run"
CHECK: Final = SERVICE / "check"

RECORDING_CHPST: Final = """#!/bin/sh
printf '%s\\n' "$$" "$(pwd)" "$@" > "$CHPST_RECORD"
"""
# Records, then runs the command after `-u USER -e DIR` as the real one would.
PASSTHROUGH_CHPST: Final = RECORDING_CHPST + 'shift 4\nexec "$@"\n'


def fake_chpst_env(tmp_path: Path, script: str = RECORDING_CHPST) -> dict[str, str]:
    """PATH with the fake chpst first, and CHPST_RECORD: the file it records into."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    chpst = bin_dir / "chpst"
    chpst.write_text(script)
    chpst.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CHPST_RECORD": str(tmp_path / "chpst.args"),
    }
