"""System programs the tests start (Debian packages that ``make test`` installs where it can:
``scripts/ensure-system-deps``), and the one rule for when one is missing: a skip where a
person runs the tests, a failure under ``CI=true``. ``pytest_sessionfinish`` (the root
conftest takes it) holds every other skip to that rule too, ``pytest.importorskip`` of a
Python package included."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_part(message: str) -> NoReturn:
    """Skip the test for a missing system part, except under ``CI=true``, where a missing part
    fails the run (never a silent skip)."""
    if _ci():
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under ``CI=true`` a run with a skipped test fails: what CI did not run, it did not check."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not _ci() or reporter is None or exitstatus != pytest.ExitCode.OK:
        return
    skipped = len(reporter.stats.get("skipped", []))
    if skipped:
        reporter.write_line(f"CI=true: {skipped} skipped; a skip fails the run here", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
