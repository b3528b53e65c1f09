"""The `serbero` command: CORE-8 config failures, BEY-10 check-config and pubkey, masking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from serbero import __version__
from serbero.cli import SUBCOMMANDS, main
from serbero.config import MASK, PromptsConfig
from serbero.protocol.keys import Keys, encode_npub, encode_nsec
from serbero.reasoning.bundle import load_bundle

# The console script installed beside the interpreter running the tests (the project venv).
SERBERO_SCRIPT = Path(sys.executable).with_name("serbero")

SERBERO = Keys.from_secret(bytes.fromhex("11" * 32))
STRAY = Keys.from_secret(bytes.fromhex("33" * 32))
MOSTRO = Keys.from_secret(bytes.fromhex("22" * 32)).public_hex
SOLVER = Keys.from_secret(bytes.fromhex("44" * 32)).public_hex
NSEC = encode_nsec(SERBERO.secret)
API_KEY = "api-key-value-never-printed"

CONFIG = f"""
[serbero]
private_key = "{NSEC}"
db_path = "file.db"

[mostro]
pubkey = "{encode_npub(MOSTRO)}"

[[relays]]
url = "wss://relay.example"

[[solvers]]
pubkey = "{SOLVER}"
permission = "Write"

[[solvers]]
pubkey = "{encode_nsec(STRAY.secret)}"

[reasoning]
api_key = "{API_KEY}-from-file"
"""
NO_RELAYS = f'[serbero]\nprivate_key = "{NSEC}"\n[mostro]\npubkey = "{MOSTRO}"\nshade = 1\n'
SECRETS = (NSEC, SERBERO.secret.hex(), encode_nsec(STRAY.secret), STRAY.secret.hex(), API_KEY)


@pytest.fixture(autouse=True)
def clean_env(serbero_free_env: None) -> Iterator[None]:
    yield
    structlog.reset_defaults()


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "serbero.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def use_config(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setenv("SERBERO_CONFIG", f" {path} ")


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- no subcommand: the daemon's config failures (CORE-8) ---------------------------------


def test_daemon_without_config_file_exits_1_with_the_reference_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "failed to load config from ./config.toml: cannot read file: No such file or directory\n"
    )


def test_daemon_with_bad_config_exits_1_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG + "\n[escalation]\ndispatch_interval_seconds = 0\n")
    use_config(monkeypatch, path)
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"failed to load config from {path}: [escalation].dispatch_interval_seconds must be > 0\n"
    )


def test_daemon_with_bad_toml_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, write(tmp_path, "[serbero\n"))
    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"failed to load config from {tmp_path / 'serbero.toml'}: invalid TOML: ")
    assert err.count("\n") == 1


def test_daemon_without_relays_logs_daemon_terminated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Logging is up by then (CORE-9): the config warnings and the fatal error are log lines."""
    use_config(monkeypatch, write(tmp_path, NO_RELAYS, mode=0o644))
    monkeypatch.setenv("SERBERO_LOG", "warn")
    assert main([]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["level"], r["target"], r["event"]) for r in lines] == [
        ("warn", "serbero.config", "config_unknown_key"),
        ("warn", "serbero.config", "config_private_key_readable"),
        ("error", "serbero.cli", "daemon_terminated"),
    ]
    assert lines[0]["key"] == "mostro.shade"
    assert lines[1]["alternative"] == "SERBERO_PRIVATE_KEY"
    assert lines[2]["error"] == (
        "no relays configured: add at least one [[relays]] entry with a url"
    )
    assert_no_secret(out)


# --- check-config -------------------------------------------------------------------------


def test_check_config_prints_the_masked_effective_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, write(tmp_path, CONFIG))
    monkeypatch.setenv("SERBERO_DB_PATH", "env.db")
    monkeypatch.setenv("SERBERO_REASONING_API_KEY", API_KEY)
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert_no_secret(out + err)
    assert out.startswith(f"# effective config from {tmp_path / 'serbero.toml'} (secrets masked)\n")
    assert f'private_key = "{MASK}"' in out
    assert 'db_path = "env.db"' in out
    assert f'pubkey = "{MOSTRO}"' in out
    assert 'permission = "write"' in out
    assert "# credential from SERBERO_REASONING_API_KEY: set (masked)" in out
    assert err.splitlines() == [
        "warning: [reasoning].api_key in the file is ignored; the credential is read from the "
        "environment variable SERBERO_REASONING_API_KEY",
        "warning: [[solvers]][1].pubkey: invalid pubkey: public key must be 64 hex characters, "
        "npub1… or nostr:npub1…; every notification to this solver will be recorded as failed",
    ]


def test_check_config_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, write(tmp_path, CONFIG))
    monkeypatch.setenv("SERBERO_REASONING_API_KEY", API_KEY)
    assert main(["check-config", "--json"]) == 0
    out, err = capsys.readouterr()
    assert_no_secret(out + err)
    data = json.loads(out)
    assert data["path"] == str(tmp_path / "serbero.toml")
    assert data["config"]["serbero"] == {
        "private_key": MASK,
        "db_path": "file.db",
        "log_level": "info",
    }
    assert data["config"]["reasoning"]["api_key"] == MASK
    assert data["config"]["solvers"][0] == {
        "pubkey": SOLVER,
        "permission": "write",
        "pubkey_hex": SOLVER,
        "pubkey_error": None,
    }
    assert data["config"]["solvers"][1]["pubkey"] == MASK
    assert [w["event"] for w in data["warnings"]] == [
        "config_api_key_ignored",
        "solver_pubkey_invalid",
    ]


def test_check_config_reports_reasoning_and_the_packaged_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15 item 6: provider, model, base URL, whether the key variable is set (never
    its value), and whether the bundle loads, with its hash. The working directory has no
    ./prompts, so every section comes from the package."""
    text = CONFIG.replace(
        "[reasoning]\n",
        '[reasoning]\nenabled = true\nprovider = "anthropic"\nmodel = "claude-x"\n'
        'api_base = "https://api.anthropic.com"\napi_key_env = "MY_KEY"\n',
    )
    use_config(monkeypatch, write(tmp_path, text + "[mediation]\nenabled = true\n"))
    monkeypatch.setenv("MY_KEY", API_KEY)
    expected_hash = load_bundle(PromptsConfig(), cwd=tmp_path).policy_hash
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert_no_secret(out + err)
    reasoning = out[out.index("[reasoning]") :].split("\n\n")[0].splitlines()
    assert reasoning[:5] == [
        "[reasoning]",
        "# credential from MY_KEY: set (masked)",
        "enabled = true",
        'provider = "anthropic"',
        'model = "claude-x"',
    ]
    assert 'api_base = "https://api.anthropic.com"' in reasoning
    prompts = out[out.index("[prompts]") :].split("\n\n")[0].splitlines()
    assert prompts[1:3] == [
        f"# prompt bundle phase3-default loads, policy_hash {expected_hash}",
        "# packaged default used (no file at the path) for: system_instructions_path, "
        "classification_policy_path, escalation_policy_path, mediation_style_path, "
        "message_templates_path",
    ]
    assert "mediation will stay off" not in err

    assert main(["check-config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt_bundle"] == {
        "loads": True,
        "bundle_id": "phase3-default",
        "policy_hash": expected_hash,
        "packaged": [
            "system_instructions_path",
            "classification_policy_path",
            "escalation_policy_path",
            "mediation_style_path",
            "message_templates_path",
        ],
        "error": None,
    }


def test_check_config_says_when_the_bundle_would_keep_mediation_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "phase3-system.md").write_bytes(b"\xff not utf-8")
    text = CONFIG.replace("[reasoning]\n", "[reasoning]\nenabled = true\n")
    use_config(monkeypatch, write(tmp_path, text + "[mediation]\nenabled = true\n"))
    monkeypatch.setenv("SERBERO_REASONING_API_KEY", API_KEY)
    problem = (
        "[prompts].system_instructions_path: ./prompts/phase3-system.md is not valid UTF-8 "
        "(invalid start byte at byte 0)"
    )
    assert main(["check-config"]) == 0
    out, err = capsys.readouterr()
    assert f"# prompt bundle does not load, mediation would stay off: {problem}" in out
    assert err.splitlines()[-1] == f"warning: mediation will stay off: {problem}"
    assert main(["check-config", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["prompt_bundle"] == {
        "loads": False,
        "bundle_id": "phase3-default",
        "policy_hash": None,
        "packaged": [],
        "error": problem,
    }


def test_check_config_failure_is_one_line_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, CONFIG.replace('"Write"', '"owner"'))
    use_config(monkeypatch, path)
    assert main(["check-config"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"failed to load config from {path}: "
        '[[solvers]][0].permission must be "read" or "write" (got "owner")\n'
    )


def test_check_config_reports_daemon_start_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, NO_RELAYS)
    use_config(monkeypatch, path)
    assert main(["check-config", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"failed to load config from {path}: "
        "no relays configured: add at least one [[relays]] entry with a url\n"
    )


def test_check_config_option_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERBERO_CONFIG", str(tmp_path / "missing.toml"))
    path = write(tmp_path, CONFIG)
    assert main(["check-config", "--config", str(path)]) == 0
    assert f"from {path} " in capsys.readouterr().out


# --- pubkey -------------------------------------------------------------------------------


def test_pubkey_prints_hex_and_npub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, write(tmp_path, CONFIG))
    assert main(["pubkey"]) == 0
    out, err = capsys.readouterr()
    assert out == f"hex:  {SERBERO.public_hex}\nnpub: {encode_npub(SERBERO.public_hex)}\n"
    assert err == ""


def test_pubkey_json_uses_the_environment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_config(monkeypatch, write(tmp_path, CONFIG))
    monkeypatch.setenv("SERBERO_PRIVATE_KEY", f" {STRAY.secret.hex().upper()} ")
    assert main(["pubkey", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "hex": STRAY.public_hex,
        "npub": encode_npub(STRAY.public_hex),
    }


def test_pubkey_without_config_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pubkey"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "failed to load config from ./config.toml: cannot read file: No such file or directory\n"
    )


def test_pubkey_in_a_real_process(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERBERO_")}
    env["SERBERO_CONFIG"] = str(path)
    result = subprocess.run(
        [str(SERBERO_SCRIPT), "pubkey"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        f"hex:  {SERBERO.public_hex}",
        f"npub: {encode_npub(SERBERO.public_hex)}",
    ]


# --- the frame ----------------------------------------------------------------------------


def test_version_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"serbero {__version__}\n"
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for subcommand in SUBCOMMANDS:
        assert subcommand.name in help_text
    assert main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_subcommands_are_registered_once() -> None:
    names = [s.name for s in SUBCOMMANDS]
    assert len(set(names)) == len(names)
    assert {"check-config", "pubkey"} <= set(names)
