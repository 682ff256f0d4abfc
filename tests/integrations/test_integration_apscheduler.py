"""APScheduler end to end: the example's ``BlockingScheduler`` (default thread pool executor)
run as a user would (``opentelemetry-instrument python scheduler.py``) against the real hub,
with nothing configured but ``WHEN_URL``. Every job run is a workflow.

One scheduler process serves the whole module; it schedules its jobs at start.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.integrations import (
    EXAMPLES,
    TIMEOUT,
    assert_each_logged_adding,
    instrumented,
    instrumented_env,
)
from when_coordinator.hub import ThreadedHub, WorkflowState
from when_coordinator.protocol import Phase

pytest.importorskip("apscheduler")

APP_DIR = EXAMPLES / "apscheduler_app"
SERVICE = "apscheduler-tests"


@pytest.fixture(scope="module")
def scheduler(hub: ThreadedHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with instrumented(
        [sys.executable, "scheduler.py"],
        cwd=APP_DIR,
        env=instrumented_env(hub.url, SERVICE, TICK_SECONDS="0.3"),
        log_path=tmp_path_factory.mktemp("apscheduler") / "scheduler.log",
        stop=signal.SIGINT,
    ) as process:
        yield process


def runs_of(hub: ThreadedHub, job_id: str) -> list[WorkflowState]:
    return [
        w
        for key, w in hub.workflows.items()
        if key.startswith(f"apscheduler-{job_id}-") and w.action_id.startswith(f"{job_id}-2")
    ]


def settled(hub: ThreadedHub, job_id: str, phase: Phase) -> WorkflowState:
    hub.wait_for(lambda h: any(w.phase is phase for w in runs_of(h, job_id)), timeout=TIMEOUT)
    return next(w for w in runs_of(hub, job_id) if w.phase is phase)


def test_each_job_run_is_a_completed_workflow_named_after_its_job(
    hub: ThreadedHub, scheduler: Any
) -> None:
    workflows = [settled(hub, f"add-{i}", Phase.COMPLETED) for i in range(5)]
    for workflow in workflows:
        assert workflow.action_type == "add"
        assert workflow.workflow_id == f"apscheduler-{workflow.action_id}"
    assert_each_logged_adding(hub, [w.workflow_id for w in workflows])
    assert not [a for a in hub.anomalies if "apscheduler-" in a.text], hub.anomalies


def test_a_job_run_in_a_process_pool_is_a_workflow(hub: ThreadedHub, scheduler: Any) -> None:
    workflow = settled(hub, "in-a-process", Phase.COMPLETED)
    assert workflow.action_type == "add"
    hub.wait_for(lambda h: bool(h.logs_for(workflow.workflow_id)), timeout=TIMEOUT)
    assert "adding 7 and 7" in [r.entry.message for r in hub.logs_for(workflow.workflow_id)]
    # The pool's worker process: the same service name, an instance of its own.
    service = hub.services[workflow.service_id]
    assert service.service_name == SERVICE
    main = settled(hub, "add-0", Phase.COMPLETED)
    assert hub.services[main.service_id].instance_id != service.instance_id


def test_an_interval_job_is_a_workflow_per_run(hub: ThreadedHub, scheduler: Any) -> None:
    def ticks(h: ThreadedHub) -> list[WorkflowState]:
        return [w for w in h.workflows.values() if w.action_type == "tick"]

    hub.wait_for(lambda h: sum(w.phase is Phase.COMPLETED for w in ticks(h)) >= 3, timeout=TIMEOUT)
    done = [w for w in ticks(hub) if w.phase is Phase.COMPLETED]
    assert len({w.workflow_id for w in done}) == len(done)


def test_a_failing_job_fails_with_its_error(hub: ThreadedHub, scheduler: Any) -> None:
    workflow = settled(hub, "fail", Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [("ValueError: boom", False)]


def test_the_hub_cancels_a_job_at_its_safe_point(hub: ThreadedHub, scheduler: Any) -> None:
    running = settled(hub, "long_job", Phase.EXECUTION)
    hub.cancel(running.workflow_id, "operator said stop")
    workflow = settled(hub, "long_job", Phase.CANCELLED)
    assert any(c.reason == "operator said stop" for c in workflow.history)


def test_a_job_added_from_a_workflow_is_its_child(hub: ThreadedHub, scheduler: Any) -> None:
    parent = settled(hub, "fan_out", Phase.COMPLETED)
    children = [settled(hub, f"child-{i}", Phase.COMPLETED) for i in range(2)]
    for child in children:
        assert child.parent_workflow_id == parent.workflow_id
        assert child.root_workflow_id == parent.workflow_id
