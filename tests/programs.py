"""System programs the tests start (Debian packages that ``make test`` installs where it can:
``scripts/ensure-system-deps``)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(name: str, package: str) -> str:
    """The path of ``name``; where it is missing the test skips, except under ``CI=true``,
    where a missing part fails the run (never a silent skip)."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (Debian: apt-get install {package}; make test does it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true: a missing part fails the run")
    pytest.skip(message)
