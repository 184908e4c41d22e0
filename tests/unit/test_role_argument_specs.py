"""Every role documents exactly its public variables.

The keys of ``defaults/main.yml`` must equal the options of the ``main`` entry point in
``meta/argument_specs.yml`` (after prometheus-community's lint_arguments_spec.sh), and every
option says what it is for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").is_file())


def _load(path: Path) -> dict:
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def test_roles_found() -> None:
    assert ROLES, f"no roles under {ROLES_DIR}"


@pytest.mark.parametrize("role", ROLES)
def test_defaults_match_argument_specs(role: str) -> None:
    defaults = _load(ROLES_DIR / role / "defaults" / "main.yml")
    specs = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"].get("options") or {}
    missing_in_specs = sorted(set(defaults) - set(options))
    missing_in_defaults = sorted(set(options) - set(defaults))
    assert not missing_in_specs, (
        f"{role}: in defaults/main.yml but not in meta/argument_specs.yml: {missing_in_specs}"
    )
    assert not missing_in_defaults, (
        f"{role}: in meta/argument_specs.yml but not in defaults/main.yml: {missing_in_defaults}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_public_variables_are_prefixed_and_described(role: str) -> None:
    specs = _load(ROLES_DIR / role / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"].get("options") or {}
    for name, option in options.items():
        assert name.startswith(f"{role}_"), f"{role}: public variable {name} must start with '{role}_'"
        assert option.get("type"), f"{role}: {name} has no type"
        assert option.get("description"), f"{role}: {name} has no description"
        assert "default" in option, f"{role}: {name} has no default"


@pytest.mark.parametrize("role", ROLES)
def test_meta_declares_no_dependencies(role: str) -> None:
    meta = _load(ROLES_DIR / role / "meta" / "main.yml")
    assert meta.get("dependencies") == [], (
        f"{role}: playbooks compose roles; meta/main.yml must say dependencies: []"
    )
