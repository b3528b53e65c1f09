"""The real `serbero` daemon as a subprocess, started the way an operator starts it.

The end-to-end benches measure the installed `serbero` entry point, not an in-process
supervisor: only then do start-up, logging and SIGTERM handling cost what they cost in
production. Each daemon gets a work directory of its own holding its config, its database
and its log (a JSON line per event), so the benches read its log events, its memory and its
exit status from outside, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

CONFIG_FILE: Final = "config.toml"
# A daemon config's `db_path` is relative to its work directory: name this file there.
DATABASE_FILE: Final = "serbero.db"
LOG_FILE: Final = "serbero.log"
READY_EVENT: Final = "event_loop_started"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
POLL_SECONDS: Final = 0.05


class DaemonProcess:
    """The `serbero` daemon on its own work directory (created if missing), config and
    database; its log goes to a file there."""

    def __init__(
        self, workdir: Path, config_text: str, extra_env: Mapping[str, str] | None = None
    ) -> None:
        """`extra_env`: variables the config names (a reasoning key's `api_key_env`, say)."""
        workdir.mkdir(exist_ok=True)
        config = workdir / CONFIG_FILE
        config.write_text(config_text)
        config.chmod(0o600)  # it holds the daemon's secret key
        self.db_path = workdir / DATABASE_FILE
        self.log_path = workdir / LOG_FILE
        self._log = self.log_path.open("w")
        script = Path(sys.executable).with_name("serbero")
        # Only the config file configures it: no SERBERO_* variable of ours leaks in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERBERO_")}
        env.update(extra_env or {})
        env["SERBERO_CONFIG"] = str(config)
        self.process = subprocess.Popen(
            [str(script) if script.exists() else "serbero"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        """Until the daemon logged `event_loop_started`: its `since` is fixed by then, so a
        dispute published afterwards is never older than its subscription."""
        self.wait_event(READY_EVENT)

    def wait_event(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Until the daemon logged event `name` (RuntimeError if it exits or times out)."""
        deadline = time.monotonic() + timeout
        while not self.count_events(name)[name]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"serbero did not log {name}; its log: {self.log_path.read_text()}"
                )
            time.sleep(POLL_SECONDS)

    def count_events(self, *names: str) -> dict[str, int]:
        """How often each log event name occurs in the daemon's log so far."""
        counts = dict.fromkeys(names, 0)
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event in counts:
                counts[event] += 1
        return counts

    def memory_mb(self) -> tuple[float, float]:
        """(VmHWM, VmRSS) in MB (1e6 bytes) from /proc/<pid>/status."""
        fields: dict[str, float] = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0]) * 1024 / 1e6
        return fields["VmHWM"], fields["VmRSS"]

    def stop(self) -> int:
        """SIGTERM, as an operator stops it (a kill after STOP_TIMEOUT); its exit status.
        Safe to call again."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
