"""The examples run as real programs: each with the hub it embeds, and each against a hub the
test started (``WHEN_URL``), which must then have seen the example's workflows."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from when_coordinator import Phase
from when_coordinator.hub import ThreadedHub, WorkflowState

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60.0

EXPECTED_OUTPUT = {
    "quickstart": [
        "checkpoint 'half-way'",
        "ended completed",
        "the hub saw: pre-flight -> planning -> execution -> completing -> completed",
        "progress 100%, checkpoint 'half-way', 3 log records",
        "[warn] 2 rows had an empty email and were kept anyway",
    ],
    "async_pipeline": [
        "loads 3 sources in parallel",
        "orders    finished  5 batches",
        "pipeline merged 12000 rows",
        "the hub's tree:",
        "load-source (invoices)",
    ],
    "pause_resume": [
        "operator: pause it",
        "workflow: pause requested after batch",
        "operator: it is paused at checkpoint 'batch-",
        "workflow: resumed, carrying on",
        "ended completed",
        "pausing -> paused -> resuming -> execution -> completing -> completed",
    ],
}


def run_example(name: str, when_url: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WHEN_", "OTEL_"))}
    if when_url is not None:
        env["WHEN_URL"] = when_url
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def by_type(hub: ThreadedHub, action_type: str) -> list[WorkflowState]:
    return [w for w in hub.workflows.values() if w.action_type == action_type]


def completed(hub: ThreadedHub, action_type: str, count: int = 1) -> list[WorkflowState]:
    """Wait until the hub holds ``count`` completed workflows of ``action_type``."""

    def check(h: ThreadedHub) -> list[WorkflowState] | None:
        found = [w for w in by_type(h, action_type) if w.phase is Phase.COMPLETED]
        return found if len(found) >= count else None

    found = hub.wait_for(check, 10.0)
    assert found is not None
    return found


def check_quickstart(hub: ThreadedHub) -> None:
    (wf,) = completed(hub, "quickstart-import")
    assert (wf.progress, wf.checkpoint_id) == (100, "half-way")
    assert wf.checkpoints[0].state == {"rows": 500}
    assert wf.current_action == ""
    hub.wait_for(lambda h: len(h.logs_for(wf.workflow_id)) == 3, 10.0)
    levels = [record.level for record in hub.logs_for(wf.workflow_id)]
    assert levels == ["info", "info", "warn"]


def check_async_pipeline(hub: ThreadedHub) -> None:
    (root,) = completed(hub, "nightly-pipeline")
    children = completed(hub, "load-source", 3)
    assert {c.stage for c in children} == {"orders", "customers", "invoices"}
    assert all(c.parent_workflow_id == root.workflow_id for c in children)
    assert all(c.root_workflow_id == root.workflow_id for c in children)
    assert set(root.children) == {c.workflow_id for c in children}


def check_pause_resume(hub: ThreadedHub) -> None:
    (wf,) = completed(hub, "nightly-report")
    phases = [change.to_phase.value for change in wf.history]
    assert phases[3:7] == ["pausing", "paused", "resuming", "execution"]
    assert wf.history[3].reason == "nightly backup"
    assert wf.history[4].checkpoint_id.startswith("batch-")


HUB_CHECKS: dict[str, Callable[[ThreadedHub], None]] = {
    "quickstart": check_quickstart,
    "async_pipeline": check_async_pipeline,
    "pause_resume": check_pause_resume,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_runs_with_its_embedded_hub(name: str) -> None:
    output = run_example(name, None)
    assert "started an embedded hub at ws://127.0.0.1:" in output
    for expected in EXPECTED_OUTPUT[name]:
        assert expected in output, f"{expected!r} not in the output of {name}:\n{output}"


@pytest.mark.parametrize("name", sorted(EXPECTED_OUTPUT))
def test_example_reports_to_the_hub_in_when_url(name: str, otel_hub: ThreadedHub) -> None:
    output = run_example(name, otel_hub.url)
    assert "started an embedded hub" not in output
    for expected in EXPECTED_OUTPUT[name]:
        assert expected in output, f"{expected!r} not in the output of {name}:\n{output}"
    HUB_CHECKS[name](otel_hub)
