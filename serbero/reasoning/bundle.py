"""The prompt bundle: the five policy files every reasoning call is built from (MED-160..162).

The files are read once per process. Their raw bytes decide the `policy_hash` that sessions,
rationales and handoffs pin, so an auditor can tell exactly which instructions a verdict was
made under (MED-161/162).

Paths come from `[prompts]` and are relative to the working directory, as in the reference.
A daemon installed with pip has no `./prompts/` next to it, so a path left at its default
that does not exist falls back to the copy shipped inside this package (`prompts/`); the
sources say which file came from where. A path the operator set is used as given: if it is
missing, unreadable or not UTF-8, loading fails (and mediation stays off, MED-10).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import msgspec

if TYPE_CHECKING:
    # Only for annotations: `serbero.config` shows check_bundle's result in check-config.
    from serbero.config.schema import PromptsConfig

__all__ = [
    "BUNDLE_ID",
    "BundleCheck",
    "BundleError",
    "PromptBundle",
    "PromptSource",
    "check_bundle",
    "load_bundle",
    "policy_hash",
]

BUNDLE_ID: Final = "phase3-default"
# The hash's domain tag and section names, in the fixed MED-161 order.
HASH_DOMAIN: Final = b"serbero/phase3"
SECTIONS: Final = ("system", "classification", "escalation", "mediation_style", "message_templates")
# Section -> the `[prompts]` key naming its file.
CONFIG_KEYS: Final = {
    "system": "system_instructions_path",
    "classification": "classification_policy_path",
    "escalation": "escalation_policy_path",
    "mediation_style": "mediation_style_path",
    "message_templates": "message_templates_path",
}
# The packaged defaults live in `serbero/reasoning/prompts/` (package data).
PACKAGE: Final = "serbero.reasoning"
PACKAGED_DIR: Final = "prompts"

Origin = Literal["configured", "packaged"]


class BundleError(ValueError):
    """A prompt file cannot be used; `str()` is the one line the operator sees."""


class PromptSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where one section was read from: the configured path, or the packaged default
    (`path` then names the file inside the package)."""

    section: str
    config_key: str
    path: str
    origin: Origin


class PromptBundle(msgspec.Struct, frozen=True, kw_only=True):
    """The five files' text, the bundle id and the hash of their raw bytes (MED-160/161)."""

    bundle_id: str
    policy_hash: str
    system: str
    classification: str
    escalation: str
    mediation_style: str
    message_templates: str
    sources: tuple[PromptSource, ...] = ()


def policy_hash(
    system: bytes,
    classification: bytes,
    escalation: bytes,
    mediation_style: bytes,
    message_templates: bytes,
) -> str:
    """Lowercase hex SHA-256 over the domain tag and each named section, NUL-separated, in
    the fixed order, with no trailing NUL (MED-161)."""
    parts = [HASH_DOMAIN]
    contents = (system, classification, escalation, mediation_style, message_templates)
    for name, content in zip(SECTIONS, contents, strict=True):
        parts += [name.encode(), content]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def _packaged(key: str, file_name: str) -> bytes:
    try:
        return resources.files(PACKAGE).joinpath(PACKAGED_DIR, file_name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BundleError(
            f"[prompts].{key}: the packaged default {file_name} is missing: {reason}"
        ) from None


def _read(section: str, configured: str, default: str, cwd: Path) -> tuple[bytes, PromptSource]:
    key = CONFIG_KEYS[section]
    path = cwd / configured
    if configured == default and not path.exists():
        file_name = Path(default).name
        source = PromptSource(
            section=section, config_key=key, path=f"{PACKAGED_DIR}/{file_name}", origin="packaged"
        )
        return _packaged(key, file_name), source
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BundleError(f"[prompts].{key}: cannot read {configured}: {reason}") from None
    return data, PromptSource(section=section, config_key=key, path=configured, origin="configured")


def load_bundle(prompts: PromptsConfig, *, cwd: Path) -> PromptBundle:
    """Read the five files (relative paths against `cwd`), check they are UTF-8, and hash
    them; `BundleError` names the first file that cannot be used."""
    defaults = type(prompts)()  # every key at its default: what "left at its default" means
    raw: dict[str, bytes] = {}
    texts: dict[str, str] = {}
    sources: list[PromptSource] = []
    for section, key in CONFIG_KEYS.items():
        data, source = _read(section, getattr(prompts, key), getattr(defaults, key), cwd)
        try:
            texts[section] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BundleError(
                f"[prompts].{key}: {source.path} is not valid UTF-8 "
                f"({exc.reason} at byte {exc.start})"
            ) from None
        raw[section] = data
        sources.append(source)
    return PromptBundle(
        bundle_id=BUNDLE_ID,
        policy_hash=policy_hash(**raw),
        sources=tuple(sources),
        **texts,
    )


class BundleCheck(msgspec.Struct, frozen=True, kw_only=True):
    """Whether the bundle loads, for `serbero check-config`: its id and hash and the sections
    served from the packaged defaults, or the error that keeps mediation off."""

    loads: bool
    bundle_id: str
    policy_hash: str | None = None
    packaged: tuple[str, ...] = ()
    error: str | None = None


def check_bundle(prompts: PromptsConfig, *, cwd: Path) -> BundleCheck:
    """`load_bundle`, reported instead of raised."""
    try:
        bundle = load_bundle(prompts, cwd=cwd)
    except BundleError as exc:
        return BundleCheck(loads=False, bundle_id=BUNDLE_ID, error=str(exc))
    packaged = tuple(s.config_key for s in bundle.sources if s.origin == "packaged")
    return BundleCheck(
        loads=True, bundle_id=bundle.bundle_id, policy_hash=bundle.policy_hash, packaged=packaged
    )
