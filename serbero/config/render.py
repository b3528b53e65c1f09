"""The effective config as an operator reads it: TOML or plain data, secrets masked.

`check-config` prints what the daemon will run with. Masking needs no list of secret keys:
every credential is a `Secret`, which turns into its mask whenever it is converted. A section
that has more to say than its values (where a credential came from, whether a file exists)
adds comment lines through `SECTION_NOTES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from serbero.config.schema import SECTIONS, Config, derived_fields, shown_pubkey
from serbero.config.secret import MASK, Secret
from serbero.printable import escaped
from serbero.reasoning.bundle import check_bundle

__all__ = ["SECTION_NOTES", "masked", "render_toml"]


def _mask(value: Any) -> Any:
    """msgspec's encode hook: a Secret prints as its mask; msgspec's hook contract says any
    other type it hands us is refused with NotImplementedError."""
    if isinstance(value, Secret):
        return value.shown
    raise NotImplementedError(f"cannot render {type(value).__name__}")


def masked(config: Config) -> dict[str, Any]:
    """Plain data for printing: secrets as MASK (set) or "" (unset), no pasted nsec echoed."""
    data: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_mask)
    for solver in data["solvers"]:
        solver["pubkey"] = shown_pubkey(solver["pubkey"])
    return data


def _reasoning_notes(config: Config) -> tuple[str, ...]:
    state = "set (masked)" if config.reasoning.api_key else "not set"
    return (f"credential from {config.reasoning.api_key_env or '(none)'}: {state}",)


def _prompts_notes(config: Config) -> tuple[str, ...]:
    """Whether the bundle loads from here (paths are relative to the working directory)."""
    check = check_bundle(config.prompts, cwd=Path.cwd())
    if not check.loads:
        return (f"prompt bundle does not load, mediation would stay off: {check.error}",)
    notes = [f"prompt bundle {check.bundle_id} loads, policy_hash {check.policy_hash}"]
    if check.packaged:
        notes.append(
            f"packaged default used (no file at the path) for: {', '.join(check.packaged)}"
        )
    return tuple(notes)


# Section -> comment lines printed under its header. A section's own checks (a prompt file
# that cannot be read, a provider that is unknown) belong here, not in the loader's errors.
SECTION_NOTES: Final[Mapping[str, Callable[[Config], tuple[str, ...]]]] = {
    "reasoning": _reasoning_notes,
    "prompts": _prompts_notes,
}


def _toml_value(value: Any) -> str:
    """A TOML literal that parses back to `value`, with nothing a terminal would act on."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + escaped(str(value), byte_escapes=False).replace('"', '\\"') + '"'


def _render_table(
    lines: list[str], header: str, table: Mapping[str, Any], comments: tuple[str, ...] = ()
) -> None:
    lines.append(header)
    lines.extend(f"# {escaped(comment)}" for comment in comments)
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
    lines.append("")


def _solver_table(entry: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A solver as loaded: its key normalised, or the reason it is unusable as a comment."""
    if entry["pubkey_error"]:
        return entry, (entry["pubkey_error"],)
    if entry["pubkey"] != MASK:
        entry["pubkey"] = entry["pubkey_hex"]
    return entry, ()


def render_toml(config: Config) -> str:
    """The effective config as TOML with secrets masked (check-config's output)."""
    data = masked(config)
    lines: list[str] = []
    for section, (_, is_array) in SECTIONS.items():
        derived = derived_fields(section)
        notes = SECTION_NOTES.get(section)
        comments = () if notes is None else notes(config)
        entries = data[section] if is_array else [data[section]]
        header = f"[[{section}]]" if is_array else f"[{section}]"
        for entry in entries:
            entry_comments = comments
            if section == "solvers":
                entry, entry_comments = _solver_table(entry)
            table = {k: v for k, v in entry.items() if k not in derived}
            _render_table(lines, header, table, entry_comments)
    return "\n".join(lines).rstrip("\n") + "\n"
