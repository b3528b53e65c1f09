"""The prompt bundle: the MED-161 hash vectors, the packaged defaults and every way a
configured file can be unusable (MED-10, MED-160..162)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import msgspec
import pytest

from serbero.config import PromptsConfig
from serbero.reasoning.bundle import (
    BUNDLE_ID,
    CONFIG_KEYS,
    BundleError,
    PromptSource,
    load_bundle,
    policy_hash,
)

# MED-161's vectors (spec values).
HASH_OF_S_C_E_M_T = "e208ac72a7e9e763ac19015546d716cc6301a582afd1ee5698d83245a78f3d1d"
HASH_OF_EMPTY_FILES = "9d05cb7ae501696a53c88d64e05a1ec1db3ea7a37384ae4f5ad674aa6704d0ad"
DEFAULTS = PromptsConfig()


def load_raw(section: str) -> bytes:
    name = Path(getattr(DEFAULTS, CONFIG_KEYS[section])).name
    return resources.files("serbero.reasoning").joinpath("prompts", name).read_bytes()


def test_policy_hash_vectors() -> None:
    assert policy_hash(b"s", b"c", b"e", b"m", b"t") == HASH_OF_S_C_E_M_T
    assert policy_hash(b"", b"", b"", b"", b"") == HASH_OF_EMPTY_FILES


def test_policy_hash_depends_on_which_file_holds_what() -> None:
    assert policy_hash(b"c", b"s", b"e", b"m", b"t") != HASH_OF_S_C_E_M_T
    assert policy_hash(b"s", b"c", b"e", b"m", b"t\n") != HASH_OF_S_C_E_M_T


def write_files(root: Path, contents: dict[str, bytes]) -> None:
    for section, data in contents.items():
        path = root / getattr(DEFAULTS, CONFIG_KEYS[section])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_files_at_the_default_paths_are_read_and_hashed_as_raw_bytes(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {
            "system": b"s",
            "classification": b"c",
            "escalation": b"e",
            "mediation_style": b"m",
            "message_templates": b"t",
        },
    )
    bundle = load_bundle(DEFAULTS, cwd=tmp_path)
    assert bundle.bundle_id == BUNDLE_ID == "phase3-default"
    assert bundle.policy_hash == HASH_OF_S_C_E_M_T
    assert (bundle.system, bundle.classification, bundle.escalation) == ("s", "c", "e")
    assert (bundle.mediation_style, bundle.message_templates) == ("m", "t")
    assert {source.origin for source in bundle.sources} == {"configured"}


def test_a_missing_default_falls_back_to_the_packaged_file_and_says_so(tmp_path: Path) -> None:
    write_files(tmp_path, {"system": b"our own system text"})
    bundle = load_bundle(DEFAULTS, cwd=tmp_path)
    assert bundle.system == "our own system text"
    assert bundle.sources[0] == PromptSource(
        section="system",
        config_key="system_instructions_path",
        path=DEFAULTS.system_instructions_path,
        origin="configured",
    )
    assert bundle.sources[1] == PromptSource(
        section="classification",
        config_key="classification_policy_path",
        path="prompts/phase3-classification.md",
        origin="packaged",
    )
    assert bundle.classification == load_raw("classification").decode()


def test_the_packaged_bundle_is_complete_and_stable(tmp_path: Path) -> None:
    bundle = load_bundle(DEFAULTS, cwd=tmp_path)
    assert [source.origin for source in bundle.sources] == ["packaged"] * 5
    assert bundle.policy_hash == policy_hash(*(load_raw(section) for section in CONFIG_KEYS))
    assert load_bundle(DEFAULTS, cwd=tmp_path) == bundle
    # What each file must say (MED-160): the JSON shape and every label and flag.
    for word in (
        "coordination_failure_resolvable",
        "not_suitable_for_mediation",
        "authority_boundary_attempt",
        "unresponsive_party",
        "buyer_clarification",
        "seller_clarification",
        '"confidence"',
    ):
        assert word in bundle.classification
    assert "assistant" in bundle.system and "assistant" in bundle.message_templates


def test_packaged_prompts_are_shipped_as_package_data() -> None:
    """A pip-installed daemon has no ./prompts: pyproject must put the files in the wheel."""
    pyproject = msgspec.toml.decode((Path(__file__).parents[2] / "pyproject.toml").read_bytes())
    globs = pyproject["tool"]["setuptools"]["package-data"]["serbero.reasoning"]
    packaged = Path(str(resources.files("serbero.reasoning"))) / "prompts"
    shipped = {path for pattern in globs for path in packaged.parent.glob(pattern)}
    assert set(packaged.glob("*.md")) <= shipped
    assert len(shipped) == 5


def test_a_configured_path_is_used_as_given_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    (tmp_path / "custom").mkdir()
    (tmp_path / "custom" / "style.md").write_bytes("Tone: calm — always.".encode())
    prompts = PromptsConfig(mediation_style_path="custom/style.md")
    bundle = load_bundle(prompts, cwd=tmp_path)
    assert bundle.mediation_style == "Tone: calm — always."
    assert bundle.sources[3].origin == "configured"
    assert bundle.sources[3].path == "custom/style.md"


def test_an_absolute_configured_path(tmp_path: Path) -> None:
    path = tmp_path / "templates.md"
    path.write_bytes(b"templates")
    bundle = load_bundle(PromptsConfig(message_templates_path=str(path)), cwd=Path("/"))
    assert bundle.message_templates == "templates"


def test_a_missing_configured_file_is_an_error(tmp_path: Path) -> None:
    prompts = PromptsConfig(escalation_policy_path="./elsewhere/escalation.md")
    with pytest.raises(BundleError) as caught:
        load_bundle(prompts, cwd=tmp_path)
    message = str(caught.value)
    assert message.startswith("[prompts].escalation_policy_path: cannot read ")
    assert "./elsewhere/escalation.md" in message and "\n" not in message


def test_a_default_path_that_is_a_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / DEFAULTS.system_instructions_path).mkdir(parents=True)
    with pytest.raises(BundleError, match=r"\[prompts\]\.system_instructions_path: cannot read"):
        load_bundle(DEFAULTS, cwd=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"classification": b"secret"})
    path = tmp_path / DEFAULTS.classification_policy_path
    path.chmod(0)
    try:
        with pytest.raises(BundleError, match="classification_policy_path: cannot read"):
            load_bundle(DEFAULTS, cwd=tmp_path)
    finally:
        path.chmod(0o600)


def test_a_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    write_files(tmp_path, {"message_templates": b"caf\xe9"})
    with pytest.raises(BundleError) as caught:
        load_bundle(DEFAULTS, cwd=tmp_path)
    assert str(caught.value) == (
        "[prompts].message_templates_path: ./prompts/phase3-message-templates.md is not valid"
        " UTF-8 (unexpected end of data at byte 3)"
    )


def test_the_hash_covers_a_byte_order_mark(tmp_path: Path) -> None:
    write_files(tmp_path, {"system": b"\xef\xbb\xbfs"})
    bundle = load_bundle(DEFAULTS, cwd=tmp_path)
    packaged = load_bundle(DEFAULTS, cwd=tmp_path / "nothing-here")
    assert bundle.system == "\ufeffs"
    assert bundle.policy_hash != packaged.policy_hash
    raw = [b"\xef\xbb\xbfs", *(load_raw(section) for section in list(CONFIG_KEYS)[1:])]
    assert bundle.policy_hash == policy_hash(*raw)
