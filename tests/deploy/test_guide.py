"""docs/deploy-runit.md, followed step by step with runit's real tools in a throwaway root.

The guide's shell blocks run as written, with four kinds of change and nothing else:
absolute paths move under a temporary root, the users are renamed per run (so a host's own
`serbero` user is never touched), the health port is a free one, and `pip install .` (which
needs the package index) becomes an offline install of this checkout into the same venv,
with its dependencies taken from the test's own environment. Then a real `runsvdir` runs the
service: `sv check` must answer `ok` once the daemon reaches a local relay, the operator
commands must work as root with no key, and after `sv down` `serbero status` must say
`stopped`. Every step is then run a second time, as the guide promises that is safe.

Needs root, runit's `chpst`, `runsvdir` and `sv`, and a `/usr/bin/python3` of the test's own
Python version (the dependencies' compiled parts are loaded by it); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.relay_fixtures import LocalRelayProcess, free_loopback_port

REPO_ROOT: Final = Path(__file__).resolve().parent.parent.parent
GUIDE: Final = REPO_ROOT / "docs" / "deploy-runit.md"
SYSTEM_PYTHON: Final = Path("/usr/bin/python3")
STEP_TIMEOUT_S: Final = 120
UP_TIMEOUT_S: Final = 60

# Paths the guide uses, longest first so /etc/serbero/env moves with /etc/serbero.
MOVED_PATHS: Final = (
    "/etc/serbero",
    "/etc/service",
    "/etc/sv",
    "/var/lib/serbero",
    "/var/log/serbero",
    "/opt/serbero",
    "/usr/local/bin",
)
# Where the guide names a user (every one must still be there, or this table is stale).
USER_SPOTS: Final = (
    ("id -u serbero-log ", "id -u {log} "),
    ("id -u serbero ", "id -u {user} "),
    ("/usr/sbin/nologin serbero-log\n", "/usr/sbin/nologin {log}\n"),
    ("/usr/sbin/nologin serbero\n", "/usr/sbin/nologin {user}\n"),
    ("-o serbero-log -g serbero-log ", "-o {log} -g {log} "),
    ("-o serbero -g serbero ", "-o {user} -g {user} "),
    ("-o root -g serbero ", "-o root -g {user} "),
    ("chpst -u serbero ", "chpst -u {user} "),
)
PIP_INSTALL: Final = "/opt/serbero/bin/pip install .\n"

# The operator's edit in step 4: our relay instead of the example's public ones.
EDITOR_SCRIPT: Final = """\
import re, sys
path, relay = sys.argv[2], sys.argv[1]
text = open(path).read()
first = r'(\\[\\[relays\\]\\]\\nurl = ")[^"]*(")'
text = re.sub(first, r'\\g<1>' + relay + r'\\g<2>', text, count=1)
text = re.sub(r'\\[\\[relays\\]\\]\\nurl = "wss://[^"]*"\\n\\n', '', text)
open(path, "w").write(text)
"""


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (users, chpst -u)"
    missing = [tool for tool in ("chpst", "runsvdir", "sv", "useradd") if not shutil.which(tool)]
    if missing:
        return f"needs runit and useradd: {', '.join(missing)} not found"
    if not SYSTEM_PYTHON.exists():
        return f"needs {SYSTEM_PYTHON}"
    version = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import sys, venv; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.stdout.strip() != str(sys.version_info[:2]):
        return f"{SYSTEM_PYTHON} is not Python {sys.version_info[:2]} with venv"
    for path in (REPO_ROOT, Path(sysconfig.get_paths()["purelib"])):
        readable = subprocess.run(["chpst", "-u", "nobody", "test", "-r", str(path)], check=False)
        if readable.returncode != 0:
            return f"{path} must be readable by other users (the service user imports from it)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def guide_steps() -> dict[str, str]:
    """`## N. Title` -> the step's shell blocks joined (the guide's own text)."""
    steps: dict[str, str] = {}
    for match in re.finditer(r"^## (\d+)\. .*?(?=^## |\Z)", GUIDE.read_text(), re.M | re.S):
        blocks = re.findall(r"^```sh\n(.*?)^```", match[0], re.M | re.S)
        steps[match[1]] = "".join(blocks)
    return steps


class ThrowawayHost:
    """The guide's host inside a temporary root, with per-run users."""

    def __init__(self, root: Path, relay_url: str) -> None:
        self.root = root
        self.relay_url = relay_url
        tag = f"{os.getpid() % 100000}"
        self.user = f"srbt{tag}"
        self.log_user = f"srbt{tag}-log"
        self.health_port = free_loopback_port()
        self.venv = root / "opt" / "serbero"
        self.service = root / "etc" / "service" / "serbero"
        self.config = root / "etc" / "serbero" / "config.toml"
        self.supervisor: subprocess.Popen[bytes] | None = None
        editor = root / "editor.py"
        editor.write_text(EDITOR_SCRIPT)
        # Root-owned and readable like the real /etc, /var, /opt, /usr/local/bin.
        for name in ("etc/service", "etc/sv", "var/lib", "var/log", "opt", "usr/local/bin"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": f"{root}/usr/local/bin:{os.environ['PATH']}",
            "EDITOR": f"{sys.executable} {editor} {relay_url}",
            "SVDIR": str(root / "etc" / "service"),
            # What ./run, ./log/run and ./check use instead of the real paths and users.
            "SERBERO_SV_USER": self.user,
            "SERBERO_SV_LOG_USER": self.log_user,
            "SERBERO_SV_ENV_DIR": f"{root}/etc/serbero/env",
            "SERBERO_SV_HOME": f"{root}/var/lib/serbero",
            "SERBERO_SV_BIN": f"{root}/opt/serbero/bin/serbero",
            "SERBERO_SV_LOG_DIR": f"{root}/var/log/serbero",
        }

    def translate(self, commands: str) -> str:
        for spot, replacement in USER_SPOTS:
            if spot in commands:
                commands = commands.replace(
                    spot, replacement.format(user=self.user, log=self.log_user)
                )
        commands = commands.replace("127.0.0.1:9797", f"127.0.0.1:{self.health_port}")
        for path in MOVED_PATHS:
            commands = re.sub(
                rf"(?<![\w/]){re.escape(path)}(?![\w-])", f"{self.root}{path}", commands
            )
        return commands

    def offline_install(self) -> None:
        """`pip install .` without the index: this checkout and the test's dependencies on
        the venv's path, and the `serbero` console script pip would have written."""
        purelib = subprocess.run(
            [
                str(self.venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        deps = sysconfig.get_paths()["purelib"]
        Path(purelib, "serbero-checkout.pth").write_text(f"{REPO_ROOT}\n{deps}\n")
        script = self.venv / "bin" / "serbero"
        script.write_text(
            f"#!{self.venv}/bin/python\n"
            "import sys\nfrom serbero.cli import main\nsys.exit(main())\n"
        )
        script.chmod(0o755)

    def run(self, commands: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["sh", "-e", "-c", commands],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        if check:
            assert result.returncode == 0, (
                f"{commands}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def run_step(self, steps: dict[str, str], number: str) -> subprocess.CompletedProcess[str]:
        commands = steps[number]
        if number == "3":
            assert PIP_INSTALL in commands
            before, after = commands.split(PIP_INSTALL)
            self.run(self.translate(before))
            self.offline_install()
            return self.run(self.translate(after))
        return self.run(self.translate(commands))

    def start_supervisor(self) -> None:
        """What step 1 checks for: a runsvdir watching the service directory."""
        self.supervisor = subprocess.Popen(
            ["runsvdir", "-P", self.env["SVDIR"]],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_supervisor(self) -> None:
        if self.supervisor is None:
            return
        for name in ("serbero/log", "serbero"):
            for action in (["-w", "10", "force-stop"], ["exit"]):
                subprocess.run(
                    ["sv", *action, name], env=self.env, capture_output=True, check=False
                )
        self.supervisor.send_signal(signal.SIGHUP)
        self.supervisor.wait(10)

    def remove_users(self) -> None:
        for name in (self.user, self.log_user):
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture
def host() -> Iterator[ThrowawayHost]:
    relay = LocalRelayProcess(free_loopback_port())
    relay.start()
    # Not pytest's tmp_path: its parents are root-only and the service users must get in.
    with tempfile.TemporaryDirectory(prefix="serbero-guide-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        made = ThrowawayHost(root, relay.url)
        try:
            yield made
        finally:
            made.stop_supervisor()
            made.remove_users()
            relay.stop()


def wait_for(host: ThrowawayHost, command: str, expected: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while True:
        result = host.run(host.translate(command), check=False)
        if expected in result.stdout or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_the_guide_installs_a_checked_service_and_can_be_run_again(host: ThrowawayHost) -> None:
    steps = guide_steps()
    assert sorted(steps) == [str(n) for n in range(1, 9)]
    assert "apt-get install -y runit" in steps["1"] and "pgrep -ax runsvdir" in steps["1"]
    assert "/usr/bin/python3 -m venv /opt/serbero" in steps["3"]
    stale = [spot for spot, _ in USER_SPOTS if spot not in "".join(steps.values())]
    assert not stale, f"USER_SPOTS no longer match the guide: {stale}"

    for number in ("2", "3", "4", "5", "6", "7"):
        result = host.run_step(steps, number)
        if number == "3":
            assert result.stdout.startswith("serbero "), result.stdout
        if number == "5":
            assert "npub1" in result.stdout
        if number == "6":
            key = (host.root / "etc/serbero/env/SERBERO_PRIVATE_KEY").read_text().strip()
            assert key not in result.stdout

    key_file = host.root / "etc/serbero/env/SERBERO_PRIVATE_KEY"
    assert key_file.stat().st_mode & 0o077 == 0
    key = key_file.read_text()
    assert host.relay_url in host.config.read_text()
    assert not re.search(r"^private_key\s*=", host.config.read_text(), re.M)

    host.start_supervisor()
    checked = wait_for(host, "sv check serbero", "ok: run: serbero")
    assert "ok: run: serbero" in checked.stdout, checked.stdout + checked.stderr
    assert host.run("sv status serbero").stdout.startswith("run: serbero")

    # The operator commands, as root, with no key in reach.
    # The health record follows the relay link within a flush interval.
    status = wait_for(host, "serbero status --config /etc/serbero/config.toml", ": healthy")
    assert status.returncode == 0, status.stdout + status.stderr
    host.run(host.translate("serbero health-check --config /etc/serbero/config.toml"))
    host.run(host.translate("serbero disputes --config /etc/serbero/config.toml --state open"))
    service_uid = int(host.run(f"id -u {host.user}").stdout)
    state = host.root / "var/lib/serbero"
    assert all(path.stat().st_uid == service_uid for path in state.iterdir())

    # Every step again: nothing breaks, the key and the operator's edit stay.
    for number in ("2", "3", "4", "5", "6", "7"):
        host.run_step(steps, number)
    assert key_file.read_text() == key
    assert host.relay_url in host.config.read_text()
    assert "ok: run: serbero" in wait_for(host, "sv check serbero", "ok: run: serbero").stdout

    # A clean stop shows at once.
    host.run("sv -w 10 down serbero")
    stopped = host.run(
        host.translate("serbero status --config /etc/serbero/config.toml"), check=False
    )
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "stopped" in stopped.stdout
