"""The OpenTelemetry layer's shared parts: waits on the hub's record of a workflow, and the
subprocess runs (scripts, ``opentelemetry-instrument``) of the instrumentor's process tests.

The fixtures this layer shares with others (``otel_hub``, ``otel_coordinator``,
``tracer_provider``, the module's ``hub``, ``receiver``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.conftest import OTEL_TIMEOUT
from when_coordinator.hub import StoredLog, ThreadedHub, WorkflowState


def wait_state(
    hub: ThreadedHub, workflow_id: str, condition: Callable[[WorkflowState], object]
) -> WorkflowState:
    """The hub's record of the workflow once ``condition`` holds for it."""

    def check(h: ThreadedHub) -> WorkflowState | None:
        state = h.workflows[workflow_id]
        return state if condition(state) else None

    found = hub.wait_for(check, OTEL_TIMEOUT)
    assert found is not None
    return found


def wait_phase(hub: ThreadedHub, workflow_id: str, phase: str) -> WorkflowState:
    """The hub's record of the workflow once it is in ``phase``."""
    return wait_state(hub, workflow_id, lambda state: state.phase.value == phase)


def history(state: WorkflowState) -> list[str]:
    """The phases the hub saw the workflow enter, in order."""
    return [change.to_phase.value for change in state.history]


# ---------------------------------------------------------------------- processes


ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "zero_code" / "app.py"
"""The zero-code example: an unmodified service run under ``opentelemetry-instrument``."""
APP_MESSAGES = {
    "nightly ETL started",
    "extracted 3 batches",
    "loaded batch 0",
    "loaded batch 1",
    "loaded batch 2",
    "nightly ETL done",
    "nightly ETL loaded 300 rows",
}
"""Every log record ``APP`` writes (the last one after its workflow ended)."""
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
OVERRIDING = ("Overriding of current", "not allowed", "Traceback")
"""What a subprocess's stderr must never show: a provider set twice, or a traceback."""


JOBS = """
import logging

log = logging.getLogger("jobs")


def job(value):
    log.info("job running with %s", value)
    return value * 2
"""


POOL_JOBS = """
import logging
import os

from when_coordinator import workflow

log = logging.getLogger("pool")


def warm():
    return os.getpid()


def child(value):
    with workflow("pool-child") as run:
        log.warning("pool child %s in %s", value, run.id)
    return {"id": run.id, "parent": run.parent_id, "root": run.root_id, "pid": os.getpid()}
"""


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without ``OTEL_*``/``WHEN_*``/``PYTHONPATH``, plus ``env``."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "WHEN_")) and k != "PYTHONPATH"
    }
    clean.update(env)
    return clean


def run(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stderr}"
    for text in OVERRIDING:
        assert text not in result.stderr, result.stderr
    return result


def run_script(
    tmp_path: Path, source: str, env: Mapping[str, str], *args: str
) -> tuple[dict[str, Any], str]:
    """Run ``source`` as a script in ``tmp_path`` (next to the jobs modules); its last stdout
    line is JSON."""
    (tmp_path / "jobs.py").write_text(textwrap.dedent(JOBS), encoding="utf-8")
    (tmp_path / "pool_jobs.py").write_text(textwrap.dedent(POOL_JOBS), encoding="utf-8")
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    result = run([sys.executable, str(script), *args], env, tmp_path)
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def of_service(hub: ThreadedHub, service_name: str) -> set[str]:
    return {s.service_id for s in hub.services.values() if s.service_name == service_name}


def workflows_of(hub: ThreadedHub, service_name: str) -> dict[str, WorkflowState]:
    services = of_service(hub, service_name)
    return {k: w for k, w in hub.workflows.items() if w.service_id in services}


def logs_of(hub: ThreadedHub, service_name: str) -> list[StoredLog]:
    services = of_service(hub, service_name)
    return [r for r in hub.logs if r.service_id in services]


def when_env(hub: ThreadedHub, service: str, **extra: str) -> dict[str, str]:
    return {
        "WHEN_URL": hub.url,
        "WHEN_SERVICE_NAME": service,
        "WHEN_RECONNECT_INITIAL_DELAY": "0.05",
        **extra,
    }
