"""Config loading: AS-9, CORE-13..17 (fatal order), BEY-12 hygiene, BEY-23, masking, BEY-5/11/24."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from serbero.config import (
    DEFAULT_CONFIG_PATH,
    MASK,
    ChatConfig,
    Config,
    ConfigError,
    EscalationConfig,
    HealthConfig,
    LoadedConfig,
    MediationConfig,
    MostroConfig,
    NotificationsConfig,
    PromptsConfig,
    ReasoningConfig,
    Secret,
    SerberoConfig,
    SolverConfig,
    TimeoutsConfig,
    config_from_toml,
    load_config,
    load_view_config,
    masked,
    render_toml,
    resolve_config_path,
    validate_for_daemon,
)
from serbero.protocol.keys import Keys, encode_npub, encode_nsec

REPO_ROOT = Path(__file__).resolve().parent.parent

SERBERO = Keys.from_secret(bytes.fromhex("11" * 32))
OTHER = Keys.from_secret(bytes.fromhex("33" * 32))
MOSTRO = Keys.from_secret(bytes.fromhex("22" * 32)).public_hex
SOLVER_A = Keys.from_secret(bytes.fromhex("44" * 32)).public_hex
SOLVER_B = Keys.from_secret(bytes.fromhex("55" * 32)).public_hex
SK_HEX = SERBERO.secret.hex()

MINIMAL = f"""
[serbero]
private_key = "{SK_HEX}"

[mostro]
pubkey = "{MOSTRO}"

[[relays]]
url = "wss://relay.example"
"""

FULL = f"""
[serbero]
private_key = "{SK_HEX}"
db_path = "/var/lib/serbero/serbero.db"
log_level = "serbero=debug"

[mostro]
pubkey = "{MOSTRO}"

[[relays]]
url = "wss://relay.one"

[[relays]]
url = "ws://127.0.0.1:7777"

[[solvers]]
pubkey = "{SOLVER_A}"
permission = "read"

[[solvers]]
pubkey = "{SOLVER_B}"
permission = "write"

[timeouts]
renotification_seconds = 120
renotification_check_interval_seconds = 0

[mediation]
enabled = true
max_rounds = 3
party_response_timeout_seconds = 0
solver_auth_retry_initial_seconds = 5
solver_auth_retry_max_interval_seconds = 50
solver_auth_retry_max_total_seconds = 500
solver_auth_retry_max_attempts = 7

[reasoning]
enabled = true
provider = "anthropic"
model = "claude-x"
api_base = "https://example.test/v1"
api_key_env = "MY_KEY"
request_timeout_seconds = 9
followup_retry_count = 4

[prompts]
system_instructions_path = "p/system.md"
classification_policy_path = "p/classification.md"
escalation_policy_path = "p/escalation.md"
mediation_style_path = "p/style.md"
message_templates_path = "p/templates.md"

[chat]
inbound_fetch_interval_seconds = 7

[escalation]
enabled = true
dispatch_interval_seconds = 45
fallback_to_all_solvers = true

[notifications]
resolution = false

[health]
listen = "127.0.0.1:9797"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_toml(text, env=env, path="cfg.toml")
    return str(info.value)


def reason_of(text: str, env: dict[str, str] | None = None) -> str:
    message = error_of(text, env)
    prefix = "failed to load config from cfg.toml: "
    assert message.startswith(prefix)
    assert "\n" not in message
    return message[len(prefix) :]


def events(loaded: LoadedConfig) -> list[tuple[str, dict[str, str | int]]]:
    return [(w.event, w.fields) for w in loaded.warnings]


# --- AS-9 ---------------------------------------------------------------------------------


def test_as9_full_file_parses(tmp_path: Path) -> None:
    loaded = load_config(str(write(tmp_path, FULL)), {"MY_KEY": "k-123"})
    cfg = loaded.config
    assert loaded.path == str(tmp_path / "config.toml")
    assert loaded.warnings == ()
    assert cfg.serbero == SerberoConfig(
        private_key=Secret(SK_HEX), db_path="/var/lib/serbero/serbero.db", log_level="serbero=debug"
    )
    assert cfg.mostro.pubkey == MOSTRO
    assert [r.url for r in cfg.relays] == ["wss://relay.one", "ws://127.0.0.1:7777"]
    assert cfg.solvers == (
        SolverConfig(pubkey=SOLVER_A, permission="read", pubkey_hex=SOLVER_A),
        SolverConfig(pubkey=SOLVER_B, permission="write", pubkey_hex=SOLVER_B),
    )
    assert cfg.timeouts == TimeoutsConfig(
        renotification_seconds=120, renotification_check_interval_seconds=0
    )
    assert cfg.mediation == MediationConfig(
        enabled=True,
        max_rounds=3,
        party_response_timeout_seconds=0,
        solver_auth_retry_initial_seconds=5,
        solver_auth_retry_max_interval_seconds=50,
        solver_auth_retry_max_total_seconds=500,
        solver_auth_retry_max_attempts=7,
    )
    assert cfg.reasoning == ReasoningConfig(
        enabled=True,
        provider="anthropic",
        model="claude-x",
        api_base="https://example.test/v1",
        api_key_env="MY_KEY",
        request_timeout_seconds=9,
        followup_retry_count=4,
        api_key=Secret("k-123"),
    )
    assert cfg.prompts == PromptsConfig(
        system_instructions_path="p/system.md",
        classification_policy_path="p/classification.md",
        escalation_policy_path="p/escalation.md",
        mediation_style_path="p/style.md",
        message_templates_path="p/templates.md",
    )
    assert cfg.chat == ChatConfig(inbound_fetch_interval_seconds=7)
    assert cfg.escalation == EscalationConfig(
        enabled=True, dispatch_interval_seconds=45, fallback_to_all_solvers=True
    )
    assert cfg.notifications == NotificationsConfig(resolution=False)
    assert cfg.health.address() == ("127.0.0.1", 9797)


def test_as9_env_overrides_win_and_are_trimmed(tmp_path: Path) -> None:
    env = {
        "SERBERO_PRIVATE_KEY": f"  {OTHER.secret.hex()}\n",
        "SERBERO_DB_PATH": "\t/tmp/env.db  ",
        "SERBERO_LOG": "  debug ",
        "MY_KEY": "  k-123 \n",
    }
    cfg = load_config(str(write(tmp_path, FULL)), env).config
    assert cfg.serbero.private_key.reveal() == OTHER.secret.hex()
    assert cfg.serbero.db_path == "/tmp/env.db"
    assert cfg.serbero.log_level == "debug"
    assert cfg.reasoning.api_key.reveal() == "k-123"
    assert cfg.identity().public_hex == OTHER.public_hex


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_as9_blank_env_keeps_file_values(tmp_path: Path, blank: str) -> None:
    env = {"SERBERO_PRIVATE_KEY": blank, "SERBERO_DB_PATH": blank, "SERBERO_LOG": blank}
    cfg = load_config(str(write(tmp_path, FULL)), {**env, "MY_KEY": "k"}).config
    assert cfg.serbero == SerberoConfig(
        private_key=Secret(SK_HEX), db_path="/var/lib/serbero/serbero.db", log_level="serbero=debug"
    )


def test_as9_malformed_toml_fails_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'ok = "valid"\n[unclosed\nx = "y"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == (
        f"failed to load config from {path}: invalid TOML: "
        "Expected ']' at the end of a table declaration (at line 2, column 10)"
    )


def test_as9_missing_file_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == (
        f"failed to load config from {path}: cannot read file: No such file or directory"
    )


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_as9_zero_dispatch_interval_names_the_key(enabled: str) -> None:
    text = MINIMAL + f"\n[escalation]\nenabled = {enabled}\ndispatch_interval_seconds = 0\n"
    assert error_of(text) == (
        "failed to load config from cfg.toml: [escalation].dispatch_interval_seconds must be > 0"
    )


def test_as9_toml_api_key_ignored() -> None:
    text = MINIMAL + '\n[reasoning]\nenabled = false\napi_key = "SECRET_FROM_TOML"\n'
    loaded = config_from_toml(text)
    assert loaded.config.reasoning.api_key.reveal() == ""
    assert events(loaded) == [
        (
            "config_api_key_ignored",
            {"key": "reasoning.api_key", "env": "SERBERO_REASONING_API_KEY"},
        )
    ]
    assert "SECRET_FROM_TOML" not in repr(loaded)
    # With the variable set, the variable (not the file) provides the credential.
    from_env = config_from_toml(text, env={"SERBERO_REASONING_API_KEY": "from-env"})
    assert from_env.config.reasoning.api_key.reveal() == "from-env"


def test_as9_omitted_sections_give_defaults() -> None:
    cfg = config_from_toml(MINIMAL).config
    assert cfg.serbero.db_path == "serbero.db"
    assert cfg.serbero.log_level == "info"
    assert cfg.solvers == ()
    assert msgspec.to_builtins(cfg.timeouts) == {
        "renotification_seconds": 300,
        "renotification_check_interval_seconds": 60,
    }
    assert msgspec.to_builtins(cfg.mediation) == {
        "enabled": False,
        "max_rounds": 2,
        "party_response_timeout_seconds": 1800,
        "solver_auth_retry_initial_seconds": 60,
        "solver_auth_retry_max_interval_seconds": 3600,
        "solver_auth_retry_max_total_seconds": 86400,
        "solver_auth_retry_max_attempts": 24,
    }
    assert masked(cfg)["reasoning"] == {
        "enabled": False,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_base": "https://api.openai.com/v1",
        "api_key_env": "SERBERO_REASONING_API_KEY",
        "request_timeout_seconds": 30,
        "followup_retry_count": 1,
        "api_key": "",
    }
    assert msgspec.to_builtins(cfg.prompts) == {
        "system_instructions_path": "./prompts/phase3-system.md",
        "classification_policy_path": "./prompts/phase3-classification.md",
        "escalation_policy_path": "./prompts/phase3-escalation-policy.md",
        "mediation_style_path": "./prompts/phase3-mediation-style.md",
        "message_templates_path": "./prompts/phase3-message-templates.md",
    }
    assert cfg.chat.inbound_fetch_interval_seconds == 10
    assert msgspec.to_builtins(cfg.escalation) == {
        "enabled": False,
        "dispatch_interval_seconds": 30,
        "fallback_to_all_solvers": False,
    }
    assert cfg.notifications.resolution is True
    assert cfg.health.listen == ""
    assert cfg.health.address() is None


def test_solver_permission_defaults_to_read() -> None:
    cfg = config_from_toml(MINIMAL + f'\n[[solvers]]\npubkey = "{SOLVER_A}"\n').config
    assert cfg.solvers[0].permission == "read"
    assert not cfg.solvers[0].can_write


def test_relays_are_optional_at_load_but_required_for_the_daemon() -> None:
    text = f'[serbero]\nprivate_key = "{SK_HEX}"\n[mostro]\npubkey = "{MOSTRO}"\n'
    loaded = config_from_toml(text, path="cfg.toml")
    assert loaded.config.relays == ()
    with pytest.raises(ConfigError) as info:
        validate_for_daemon(loaded)
    assert str(info.value) == (
        "failed to load config from cfg.toml: no relays configured: "
        "add at least one [[relays]] entry with a url"
    )
    validate_for_daemon(config_from_toml(MINIMAL))


# --- config path (CORE-8) -----------------------------------------------------------------


def test_config_path_resolution(tmp_path: Path) -> None:
    assert resolve_config_path({}) == DEFAULT_CONFIG_PATH == "./config.toml"
    assert resolve_config_path({"SERBERO_CONFIG": "   "}) == "./config.toml"
    assert resolve_config_path({"SERBERO_CONFIG": " /etc/s.toml\n"}) == "/etc/s.toml"
    path = write(tmp_path, MINIMAL, name="other.toml")
    loaded = load_config(None, {"SERBERO_CONFIG": f"  {path} "})
    assert loaded.path == str(path)
    assert loaded.config.mostro.pubkey == MOSTRO


def test_default_path_is_config_toml_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    assert load_config(None, {}).path == "./config.toml"


# --- CORE-16: every fatal, in order -------------------------------------------------------


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path), {})
    assert (
        str(info.value)
        == f"failed to load config from {tmp_path}: cannot read file: Is a directory"
    )


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(b'a = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert str(info.value) == (
        f"failed to load config from {path}: file is not valid UTF-8: invalid start byte"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f'[mostro]\npubkey = "{MOSTRO}"\n', "missing required section [serbero]"),
        (f'[serbero]\nprivate_key = "{SK_HEX}"\n', "missing required section [mostro]"),
        (
            f'[serbero]\ndb_path = "x"\n[mostro]\npubkey = "{MOSTRO}"\n',
            "missing required key [serbero].private_key (or set SERBERO_PRIVATE_KEY)",
        ),
        (
            f'[serbero]\nprivate_key = "{SK_HEX}"\n[mostro]\n',
            "missing required key [mostro].pubkey",
        ),
        (
            MINIMAL + '[[relays]]\nurl = "wss://b"\n[[relays]]\n',
            "missing required key [[relays]][2].url",
        ),
        (
            MINIMAL + f'[[solvers]]\npubkey = "{SOLVER_A}"\n[[solvers]]\npermission = "read"\n',
            "missing required key [[solvers]][1].pubkey",
        ),
    ],
)
def test_missing_required_section_or_key(text: str, reason: str) -> None:
    assert reason_of(text) == reason


def test_private_key_may_come_only_from_the_environment() -> None:
    text = f'[mostro]\npubkey = "{MOSTRO}"\n[[relays]]\nurl = "wss://r"\n'
    cfg = config_from_toml(text, env={"SERBERO_PRIVATE_KEY": encode_nsec(OTHER.secret)}).config
    assert cfg.serbero.private_key.reveal() == OTHER.secret.hex()
    assert cfg.serbero.db_path == "serbero.db"


@pytest.mark.parametrize(
    ("section", "line", "reason"),
    [
        (
            "timeouts",
            "renotification_seconds = -1",
            "[timeouts].renotification_seconds must be an integer >= 0 (got integer -1)",
        ),
        (
            "timeouts",
            "renotification_seconds = 1.5",
            "[timeouts].renotification_seconds must be an integer >= 0 (got float 1.5)",
        ),
        (
            "escalation",
            'dispatch_interval_seconds = "30"',
            '[escalation].dispatch_interval_seconds must be an integer >= 0 (got string "30")',
        ),
        (
            "chat",
            "inbound_fetch_interval_seconds = true",
            "[chat].inbound_fetch_interval_seconds must be an integer >= 0 (got boolean True)",
        ),
        (
            "mediation",
            "max_rounds = 4294967296",
            "[mediation].max_rounds must be an integer between 0 and 4294967295 "
            "(got integer 4294967296)",
        ),
        (
            "mediation",
            'enabled = "yes"',
            '[mediation].enabled must be true or false (got string "yes")',
        ),
        ("reasoning", "model = 4", "[reasoning].model must be a string (got integer 4)"),
        ("health", "listen = 9797", "[health].listen must be a string (got integer 9797)"),
        (
            "notifications",
            "resolution = 1",
            "[notifications].resolution must be true or false (got integer 1)",
        ),
    ],
)
def test_wrong_type_is_fatal(section: str, line: str, reason: str) -> None:
    assert reason_of(MINIMAL + f"\n[{section}]\n{line}\n") == reason


def test_wrong_type_never_echoes_the_private_key_value() -> None:
    text = f'[serbero]\nprivate_key = ["{SK_HEX}"]\n[mostro]\npubkey = "{MOSTRO}"\n'
    reason = reason_of(text)
    assert reason == "[serbero].private_key must be a string (got array)"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("timeouts = 5\n" + MINIMAL, "[timeouts] must be a table (got integer)"),
        (
            MINIMAL.replace("[[relays]]", "[relays]"),
            "[[relays]] must be an array of tables (got table)",
        ),
        (
            MINIMAL + '\n[[solvers]]\npubkey = 5\npermission = "read"\n',
            "[[solvers]][0].pubkey must be a string (got integer 5)",
        ),
        (
            MINIMAL + '\n[[solvers]]\npubkey = "x"\npermission = 1\n',
            "[[solvers]][0].permission must be a string (got integer 1)",
        ),
    ],
)
def test_wrong_shape_is_fatal(text: str, reason: str) -> None:
    assert reason_of(text) == reason


@pytest.mark.parametrize("permission", ["admin", "", "reader"])
def test_invalid_permission_is_fatal(permission: str) -> None:
    text = MINIMAL + f'\n[[solvers]]\npubkey = "{SOLVER_A}"\npermission = "{permission}"\n'
    assert reason_of(text) == (
        f'[[solvers]][0].permission must be "read" or "write" (got "{permission}")'
    )


def test_reasoning_credential_rules() -> None:
    enabled = MINIMAL + "\n[reasoning]\nenabled = true\n"
    assert reason_of(enabled) == (
        "[reasoning].enabled = true but the credential variable SERBERO_REASONING_API_KEY "
        "(named by [reasoning].api_key_env) is unset or empty"
    )
    assert reason_of(enabled, {"SERBERO_REASONING_API_KEY": "  "}).startswith(
        "[reasoning].enabled = true but the credential variable SERBERO_REASONING_API_KEY"
    )
    empty_name = MINIMAL + '\n[reasoning]\nenabled = true\napi_key_env = "  "\n'
    assert (
        reason_of(empty_name) == "[reasoning].api_key_env is empty but [reasoning].enabled = true"
    )
    named = MINIMAL + '\n[reasoning]\nenabled = true\napi_key_env = " OTHER_VAR "\n'
    assert "OTHER_VAR" in reason_of(named, {"SERBERO_REASONING_API_KEY": "wrong-var"})
    cfg = config_from_toml(named, env={"OTHER_VAR": " tok "}).config
    assert (cfg.reasoning.api_key_env, cfg.reasoning.api_key.reveal()) == ("OTHER_VAR", "tok")
    # Disabled: read when present, never required.
    disabled = MINIMAL + "\n[reasoning]\nenabled = false\n"
    assert config_from_toml(disabled).config.reasoning.api_key.reveal() == ""
    present = config_from_toml(disabled, env={"SERBERO_REASONING_API_KEY": "x"})
    assert present.config.reasoning.api_key.reveal() == "x"


@pytest.mark.parametrize(
    ("pubkey", "detail"),
    [
        ("bb22", "public key must be 64 hex characters, npub1… or nostr:npub1…"),
        ("0" * 64, "public key is not a point on secp256k1 (lift_x failed)"),
    ],
)
def test_invalid_mostro_key_is_fatal(pubkey: str, detail: str) -> None:
    text = MINIMAL.replace(MOSTRO, pubkey)
    assert reason_of(text) == f"[mostro].pubkey is not a valid public key: {detail}"


def test_invalid_private_key_is_fatal_and_names_its_source() -> None:
    text = MINIMAL.replace(SK_HEX, "aa11")
    reason = reason_of(text)
    assert reason == (
        "[serbero].private_key is not a valid secret key: "
        "secret key must be 64 hex characters or nsec1…"
    )
    from_env = reason_of(MINIMAL, {"SERBERO_PRIVATE_KEY": "0" * 64})
    assert from_env == (
        "SERBERO_PRIVATE_KEY is not a valid secret key: secret key must be 32 bytes in [1, n-1]"
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://relay.example", 'must use ws:// or wss:// (got "https://relay.example")'),
        ("relay.example", 'must use ws:// or wss:// (got "relay.example")'),
        ("wss://", 'has no valid host/port (got "wss://")'),
        ("wss://relay.example:0", 'has no valid host/port (got "wss://relay.example:0")'),
        (
            "wss://relay.example:99999",
            "is not a valid URL (Port out of range 0-65535)",
        ),
        (" wss://relay.example", "must be a ws:// or wss:// URL without surrounding spaces"),
        ("", "must be a ws:// or wss:// URL without surrounding spaces"),
    ],
)
def test_invalid_relay_url_is_fatal(url: str, reason: str) -> None:
    text = MINIMAL + f'\n[[relays]]\nurl = "{url}"\n'
    assert reason_of(text) == f"[[relays]][1].url {reason}"


def test_relay_schemes_are_case_insensitive() -> None:
    cfg = config_from_toml(MINIMAL + '\n[[relays]]\nurl = "WSS://Relay.Example"\n').config
    assert cfg.relays[1].url == "WSS://Relay.Example"


def test_fatal_errors_are_reported_in_core16_order() -> None:
    """Fix one problem at a time; the next one in CORE-16 order is the one reported."""
    problems = {
        "section": f'[mostro]\npubkey = "{"0" * 64}"\n',
        "type": "[timeouts]\nrenotification_seconds = -5\n",
        "permission": '[[solvers]]\npubkey = "x"\npermission = "boss"\n',
        "credential": "[reasoning]\nenabled = true\n",
        "interval": "[escalation]\ndispatch_interval_seconds = 0\n",
        "relay": '[[relays]]\nurl = "http://bad"\n',
    }
    fixes = {
        "section": f'[mostro]\npubkey = "{MOSTRO}"\n',
        "type": "[timeouts]\nrenotification_seconds = 5\n",
        "permission": '[[solvers]]\npubkey = "x"\npermission = "read"\n',
        "credential": "[reasoning]\nenabled = false\n",
        "interval": "[escalation]\ndispatch_interval_seconds = 1\n",
        "relay": '[[relays]]\nurl = "ws://good"\n',
    }
    serbero = '[serbero]\nprivate_key = "nope"\n'
    expected = [
        ("section", "missing required section [mostro]"),
        ("type", "[timeouts].renotification_seconds must be an integer >= 0 (got integer -5)"),
        ("permission", '[[solvers]][0].permission must be "read" or "write" (got "boss")'),
        ("credential", "[reasoning].enabled = true but the credential variable"),
        ("interval", "[escalation].dispatch_interval_seconds must be > 0"),
        ("mostro", "[mostro].pubkey is not a valid public key"),
        ("private", "[serbero].private_key is not a valid secret key"),
        ("relay", '[[relays]][0].url must use ws:// or wss:// (got "http://bad")'),
    ]
    current = dict(problems)
    current["section"] = ""  # [mostro] absent
    for step, reason in expected:
        text = serbero + "".join(current.values())
        assert reason_of(text).startswith(reason), step
        if step == "section":
            current["section"] = problems["section"]
        elif step == "mostro":
            current["section"] = fixes["section"]
        elif step == "private":
            serbero = f'[serbero]\nprivate_key = "{SK_HEX}"\n'
        else:
            current[step] = fixes[step]
    loaded = config_from_toml(serbero + "".join(current.values()))
    assert [w.event for w in loaded.warnings] == ["solver_pubkey_invalid"]


# --- BEY-12 hygiene -----------------------------------------------------------------------


def test_keys_in_any_accepted_form_are_normalised_to_lowercase_hex() -> None:
    text = f"""
[serbero]
private_key = "{encode_nsec(SERBERO.secret)}"
[mostro]
pubkey = "{encode_npub(MOSTRO)}"
[[solvers]]
pubkey = "{SOLVER_A.upper()}"
[[solvers]]
pubkey = "nostr:{encode_npub(SOLVER_B)}"
"""
    cfg = config_from_toml(text).config
    assert cfg.serbero.private_key.reveal() == SK_HEX
    assert cfg.mostro.pubkey == MOSTRO
    assert [s.pubkey_hex for s in cfg.solvers] == [SOLVER_A, SOLVER_B]
    assert [s.pubkey for s in cfg.solvers] == [SOLVER_A.upper(), f"nostr:{encode_npub(SOLVER_B)}"]
    upper = config_from_toml(
        MINIMAL.replace(SK_HEX, SK_HEX.upper()).replace(MOSTRO, MOSTRO.upper())
    )
    assert upper.config.serbero.private_key.reveal() == SK_HEX
    assert upper.config.mostro.pubkey == MOSTRO


@pytest.mark.parametrize(
    "second",
    [SOLVER_A, SOLVER_A.upper(), encode_npub(SOLVER_A)],
)
def test_duplicate_solvers_are_fatal(second: str) -> None:
    text = MINIMAL + f'\n[[solvers]]\npubkey = "{SOLVER_A}"\n[[solvers]]\npubkey = "{second}"\n'
    assert reason_of(text) == (
        "[[solvers]][1].pubkey duplicates [[solvers]][0].pubkey (the same key once normalised)"
    )


def test_duplicate_malformed_solvers_are_fatal_too() -> None:
    text = MINIMAL + '\n[[solvers]]\npubkey = "junk"\n[[solvers]]\npubkey = "junk"\n'
    assert reason_of(text).startswith("[[solvers]][1].pubkey duplicates [[solvers]][0].pubkey")


def test_unknown_keys_are_warned_by_dotted_name() -> None:
    text = f"""
top_level = 1
[serbero]
private_key = "{SK_HEX}"
colour = "blue"
[mostro]
pubkey = "{MOSTRO}"
[[relays]]
url = "wss://r"
weight = 3
[escalation]
enabled = false
retries = 2
[mystery]
a = 1
"""
    loaded = config_from_toml(text)
    assert [(event, fields["key"]) for event, fields in events(loaded)] == [
        ("config_unknown_key", "top_level"),
        ("config_unknown_key", "mystery"),
        ("config_unknown_key", "serbero.colour"),
        ("config_unknown_key", "relays[0].weight"),
        ("config_unknown_key", "escalation.retries"),
    ]
    assert loaded.config.escalation == EscalationConfig()


def test_unknown_keys_cannot_set_derived_fields() -> None:
    text = MINIMAL + '\n[[solvers]]\npubkey = "junk"\npubkey_hex = "' + SOLVER_A + '"\n'
    solver = config_from_toml(text).config.solvers[0]
    assert solver.pubkey_hex is None
    assert solver.pubkey_error is not None


@pytest.mark.parametrize(
    ("written", "stored"), [("Write", "write"), ("READ", "read"), (" write ", "write")]
)
def test_permission_is_case_insensitive(written: str, stored: str) -> None:
    text = MINIMAL + f'\n[[solvers]]\npubkey = "{SOLVER_A}"\npermission = "{written}"\n'
    assert config_from_toml(text).config.solvers[0].permission == stored


def test_malformed_solver_key_is_kept_and_warned_not_fatal() -> None:
    """Core AS-3: the sender records a `failed` row `invalid pubkey: …` for this solver."""
    text = (
        MINIMAL
        + f'\n[[solvers]]\npubkey = "{SOLVER_A}"\n[[solvers]]\npubkey = "not-a-real-hex-pubkey"\n'
    )
    loaded = config_from_toml(text)
    good, bad = loaded.config.solvers
    assert (good.pubkey_hex, good.pubkey_error) == (SOLVER_A, None)
    assert bad.pubkey == "not-a-real-hex-pubkey"
    assert bad.pubkey_hex is None
    assert bad.pubkey_error is not None and bad.pubkey_error.startswith("invalid pubkey: ")
    assert events(loaded) == [("solver_pubkey_invalid", {"idx": 1, "error": bad.pubkey_error})]


def test_solver_from_text_matches_the_loader() -> None:
    assert SolverConfig.from_text(encode_npub(SOLVER_B), "write") == SolverConfig(
        pubkey=encode_npub(SOLVER_B), permission="write", pubkey_hex=SOLVER_B
    )
    assert SolverConfig.from_text("x").pubkey_error == (
        "invalid pubkey: public key must be 64 hex characters, npub1… or nostr:npub1…"
    )


# --- BEY-23 -------------------------------------------------------------------------------


def test_group_readable_file_with_private_key_warns(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL, mode=0o644)
    loaded = load_config(str(path), {})
    assert events(loaded) == [
        (
            "config_private_key_readable",
            {"path": str(path), "mode": "0644", "alternative": "SERBERO_PRIVATE_KEY"},
        )
    ]
    assert "SERBERO_PRIVATE_KEY" in loaded.warnings[0].message
    assert SK_HEX not in loaded.warnings[0].message


def test_owner_only_file_or_key_from_env_does_not_warn(tmp_path: Path) -> None:
    assert load_config(str(write(tmp_path, MINIMAL, mode=0o600)), {}).warnings == ()
    keyless = MINIMAL.replace(f'private_key = "{SK_HEX}"', 'db_path = "x.db"')
    path = write(tmp_path, keyless, name="keyless.toml", mode=0o644)
    assert load_config(str(path), {"SERBERO_PRIVATE_KEY": SK_HEX}).warnings == ()


# --- masking ------------------------------------------------------------------------------


def secrets_config() -> Config:
    text = FULL + f'\n[[solvers]]\npubkey = "{encode_nsec(OTHER.secret)}"\n'
    return config_from_toml(text, env={"MY_KEY": "api-secret-value"}).config


def assert_no_secret(text: str) -> None:
    for secret in (
        SK_HEX,
        encode_nsec(SERBERO.secret),
        encode_nsec(OTHER.secret),
        "api-secret-value",
    ):
        assert secret not in text


def test_masked_hides_every_secret() -> None:
    cfg = secrets_config()
    data = masked(cfg)
    assert data["serbero"]["private_key"] == MASK
    assert data["reasoning"]["api_key"] == MASK
    assert data["solvers"][2]["pubkey"] == MASK
    assert data["solvers"][0]["pubkey"] == SOLVER_A
    assert_no_secret(repr(data))
    assert_no_secret(repr(cfg))
    assert_no_secret(str(cfg.serbero))
    assert cfg.reasoning.api_key.reveal() == "api-secret-value"


def test_render_toml_is_masked_and_parses_back() -> None:
    cfg = secrets_config()
    text = render_toml(cfg)
    assert_no_secret(text)
    assert "# credential from MY_KEY: set (masked)" in text
    assert "# invalid pubkey: " in text
    parsed = msgspec.toml.decode(text)
    assert parsed["serbero"] == {
        "private_key": MASK,
        "db_path": "/var/lib/serbero/serbero.db",
        "log_level": "serbero=debug",
    }
    assert "api_key" not in parsed["reasoning"]
    assert parsed["solvers"] == [
        {"pubkey": SOLVER_A, "permission": "read"},
        {"pubkey": SOLVER_B, "permission": "write"},
        {"pubkey": MASK, "permission": "read"},
    ]
    assert parsed["health"] == {"listen": "127.0.0.1:9797"}
    assert set(parsed) == set(masked(cfg))


# --- direct construction (CORE-12) and our sections ---------------------------------------


def test_config_can_be_built_directly() -> None:
    cfg = Config(
        serbero=SerberoConfig(private_key=Secret(SK_HEX)),
        mostro=MostroConfig(pubkey=MOSTRO),
        solvers=(SolverConfig.from_text(SOLVER_A),),
    )
    assert cfg.identity().public_hex == SERBERO.public_hex
    assert cfg.relays == ()
    assert cfg.escalation.dispatch_interval_seconds == 30
    assert cfg.notifications == NotificationsConfig(resolution=True)
    assert cfg.health == HealthConfig(listen="")


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:9797", ("127.0.0.1", 9797)),
        ("[::1]:8080", ("::1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("127.0.0.2:1", ("127.0.0.2", 1)),
    ],
)
def test_health_listen_accepts_loopback(listen: str, address: tuple[str, int]) -> None:
    cfg = config_from_toml(MINIMAL + f'\n[health]\nlisten = "{listen}"\n').config
    assert cfg.health.address() == address


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:9797", "the health endpoint listens on loopback addresses only"),
        ("10.1.2.3:9797", "the health endpoint listens on loopback addresses only"),
        ("9797", "expected host:port"),
        ("127.0.0.1:http", "expected host:port"),
        ("127.0.0.1:70000", "port must be at most 65535"),
        ("example.com:80", "'example.com' is not an IP address or localhost"),
    ],
)
def test_health_listen_rejects_the_rest(listen: str, problem: str) -> None:
    reason = reason_of(MINIMAL + f'\n[health]\nlisten = "{listen}"\n')
    assert reason == f'[health].listen {problem} (got "{listen}")'


def test_example_config_parses() -> None:
    path = REPO_ROOT / "examples" / "config.toml"
    loaded = load_config(str(path), {})
    validate_for_daemon(loaded)
    assert [w.event for w in loaded.warnings if w.event != "config_private_key_readable"] == []
    cfg = loaded.config
    assert len(cfg.relays) == 2
    assert [s.permission for s in cfg.solvers] == ["write", "read"]
    assert all(s.pubkey_hex for s in cfg.solvers)
    # Every key the example shows is at its documented default, except the per-site ones.
    defaults = Config(
        serbero=cfg.serbero, mostro=cfg.mostro, relays=cfg.relays, solvers=cfg.solvers
    )
    assert cfg == defaults


def test_load_config_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERBERO_DB_PATH", " from-environ.db ")
    cfg = load_config(str(write(tmp_path, MINIMAL))).config
    assert cfg.serbero.db_path == "from-environ.db"
    assert os.environ["SERBERO_DB_PATH"] == " from-environ.db "


# --- Secret -------------------------------------------------------------------------------


def test_secret_never_shows_its_value() -> None:
    secret = Secret("s3cr3t-value")
    shown = [repr(secret), str(secret), f"{secret}", format(secret), repr([secret])]
    assert all("s3cr3t" not in text for text in shown)
    assert str(secret) == MASK
    assert secret.reveal() == "s3cr3t-value"
    assert secret and not Secret("")
    assert str(Secret("")) == ""
    assert secret == Secret("s3cr3t-value") != Secret("other")
    assert len({secret, Secret("s3cr3t-value")}) == 1


def test_config_structs_print_without_secrets() -> None:
    cfg = secrets_config()
    for shown in (repr(cfg), str(cfg.serbero), repr(cfg.reasoning), f"{cfg.serbero.private_key}"):
        assert_no_secret(shown)
    assert f"private_key=Secret({MASK!r})" in repr(cfg.serbero)


def test_view_config_reads_only_what_views_need(tmp_path: Path) -> None:
    text = (
        '[serbero]\ndb_path = "/srv/serbero.db"\nlog_level = 7\n[[relays]]\nurl = "wss://r.one"\n'
        '[health]\nlisten = "127.0.0.1:9797"\n[[solvers]]\npubkey = 1\n'
    )
    view = load_view_config(str(write(tmp_path, text)), {})
    assert view.db_path == "/srv/serbero.db"
    assert [relay.url for relay in view.relays] == ["wss://r.one"]
    assert view.health.address() == ("127.0.0.1", 9797)
    empty = load_view_config(str(write(tmp_path, "", name="empty.toml")), {})
    assert (empty.db_path, empty.relays, empty.health.listen) == ("serbero.db", (), "")
    from_env = load_view_config(str(write(tmp_path, text)), {"SERBERO_DB_PATH": " /e.db "})
    assert from_env.db_path == "/e.db"
