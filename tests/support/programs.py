"""System programs the tests start (Debian packages that ``make test`` installs where it can:
``scripts/ensure-system-deps``), and the one rule for when one is missing."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing_part(message: str) -> NoReturn:
    """Skip the test for a missing system part, except under ``CI=true``, where a missing part
    fails the run (never a silent skip)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true: a missing part fails the run")
    pytest.skip(message)


def require_program(name: str, package: str) -> str:
    """The path of ``name``, else ``missing_part`` saying how to install it."""
    path = shutil.which(name)
    if path is None:
        missing_part(
            f"{name} is not installed (Debian: apt-get install {package}; make test does it)"
        )
    return path
