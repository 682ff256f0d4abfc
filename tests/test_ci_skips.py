"""Under ``CI=true`` a skipped test fails the run (tests/support/programs.py), whatever skipped
it; elsewhere a skip is a skip. Checked on a pytest run of its own, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.importorskip("no_such_package_for_when_coordinator")
"""


def run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_module.py").write_text(MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.programs"]
    command += ["-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"), str(tmp_path)]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = run(tmp_path, "true")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
    assert "CI=true: 1 skipped" in done.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_skip_is_a_skip_elsewhere(tmp_path: Path, ci: str | None) -> None:
    done = run(tmp_path, ci)
    assert done.returncode == pytest.ExitCode.OK, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
