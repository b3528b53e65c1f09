"""The real `serbero` console script as a subprocess, for signal and crash tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

from serbero.protocol.keys import Keys

# The console script installed next to the interpreter running the tests (the venv's bin/).
SERBERO_SCRIPT: Final = Path(sys.executable).parent / "serbero"
READY_EVENT: Final = "event_loop_started"


def write_config(
    directory: Path,
    *,
    mostro: Keys,
    relay_url: str,
    solvers: list[str],
    db_name: str = "serbero.db",
) -> Path:
    """A config.toml without the private key (it comes from the environment, BEY-23)."""
    solver_tables = "".join(f'\n[[solvers]]\npubkey = "{pubkey}"\n' for pubkey in solvers)
    path = directory / "config.toml"
    path.write_text(
        f'[serbero]\ndb_path = "{directory / db_name}"\nlog_level = "info"\n\n'
        f'[mostro]\npubkey = "{mostro.public_hex}"\n\n'
        f'[[relays]]\nurl = "{relay_url}"\n{solver_tables}'
    )
    return path


class DaemonProcess:
    """`serbero` with SERBERO_CONFIG set; collects its JSON log lines as they arrive."""

    def __init__(self, config_path: Path, private_key: Keys) -> None:
        env = dict(os.environ)
        env["SERBERO_CONFIG"] = str(config_path)
        env["SERBERO_PRIVATE_KEY"] = private_key.secret.hex()
        env.pop("SERBERO_DB_PATH", None)
        env.pop("SERBERO_LOG", None)
        self.process = subprocess.Popen(
            [str(SERBERO_SCRIPT)],
            env=env,
            cwd=config_path.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._cond = threading.Condition()
        self.records: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                record = json.loads(raw)
            except ValueError:
                record = {"event": "<unparsed>", "line": raw.decode(errors="replace")}
            with self._cond:
                self.records.append(record)
                self._cond.notify_all()

    def events(self) -> list[str]:
        with self._cond:
            return [str(record.get("event")) for record in self.records]

    def wait_for_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """Block until a record named `name` was logged; that record."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self.records:
                    if record.get("event") == name:
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and not self._reader_alive()):
                    raise TimeoutError(f"no {name!r} in {self.events()!r}; stderr: {self.stderr()}")
                self._cond.wait(min(remaining, 0.1))

    def _reader_alive(self) -> bool:
        return self._reader.is_alive()

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read().decode(errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
