"""The documentation tells the truth about the environment the code reads."""

from __future__ import annotations

import re
from pathlib import Path

from when_coordinator.client.config import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
VARIABLE = re.compile(r"\b(?:WHEN|OTEL)_[A-Z][A-Z0-9_]*\b")


def _read_by_code() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src").rglob("*.py"):
        names.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_variable_the_code_names_is_in_the_environment_list() -> None:
    listed = {var.name for var in ENVIRONMENT}
    assert _read_by_code() <= listed, sorted(_read_by_code() - listed)


def test_every_listed_variable_is_documented_with_its_field() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for var in ENVIRONMENT:
        row = next(
            (line for line in page.splitlines() if line.startswith(f"| `{var.name}` |")), None
        )
        assert row is not None, f"{var.name} is not documented in docs/configuration.md"
        if var.field:
            assert f"`{var.field}`" in row, f"{var.name} should name Config.{var.field}"


def test_the_configuration_page_names_no_unknown_variable() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    listed = {var.name for var in ENVIRONMENT}
    assert set(VARIABLE.findall(page)) <= listed
