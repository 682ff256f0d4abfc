"""docs/reliability.md names the tests that prove each guarantee: they must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"`(?:tests/)?((?:\w+/)?test_\w+\.py)?(?:::(test_\w+))?[^`]*`")
"""A test file (``tests/<layer>/test_x.py``, relative to ``tests/``) and/or a test in it."""


def test_every_test_the_reliability_page_names_exists() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = 0
    for line in page.splitlines():
        current = ""
        for match in NAMED.finditer(line):
            if match.group(1):
                current = match.group(1)
                assert (ROOT / "tests" / current).exists(), current
            if match.group(2):
                assert current, f"{match.group(0)} names no file before it"
                source = (ROOT / "tests" / current).read_text(encoding="utf-8")
                assert re.search(rf"^(?:async )?def {match.group(2)}\(", source, re.M), (
                    f"{current}::{match.group(2)} does not exist"
                )
                named += 1
    assert named >= 50
