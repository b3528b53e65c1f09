#!/usr/bin/env python3
"""Bootstrap for a fresh machine with only python3: make `.venv`, install, run a `just` recipe.

Usage: python3 dev.py <recipe> [args...]   e.g. `python3 dev.py test`, `python3 dev.py demo`.
The virtual environment is (re)installed whenever pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".serbero-deps"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _deps_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """Create or refresh the project's virtual environment; cheap when already current."""
    digest = _deps_digest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing serbero with its dev extras into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev,demo]"], check=True)
    STAMP.write_text(digest)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    just = BIN / "just"
    return subprocess.call(
        [str(just), "--justfile", str(ROOT / "justfile"), *sys.argv[1:]], env=env
    )


if __name__ == "__main__":
    sys.exit(main())
