"""Huey end to end: a real Redis (``RedisHuey``), the real hub, and Huey's consumer run as a
user would (``opentelemetry-instrument huey_consumer huey_tasks.huey``), with nothing configured
but ``WHEN_URL``.

One consumer serves the whole module; each test enqueues its own tasks and waits on the hub.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from tests.support.integrations import (
    BIN,
    EXAMPLES,
    TIMEOUT,
    Workflows,
    assert_each_logged_adding,
    instrumented,
    instrumented_env,
    redis_database,
    services,
)
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

pytest.importorskip("huey")
pytest.importorskip("redis")

APP_DIR = EXAMPLES / "huey_app"
SERVICE = "huey-tests"
HUEY = Workflows("huey")
workflow_of = HUEY.workflow_of
settled = HUEY.settled


@pytest.fixture(scope="module")
def huey_url(redis_url: str) -> str:
    return redis_database(redis_url, 4)  # a database of its own


@pytest.fixture(scope="module")
def consumer(
    hub: ThreadedHub, huey_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    with instrumented(
        [str(BIN / "huey_consumer"), "huey_tasks.huey", "--workers", "2"],
        cwd=APP_DIR,
        env=instrumented_env(hub.url, SERVICE, ("HUEY_",), HUEY_REDIS_URL=huey_url),
        log_path=tmp_path_factory.mktemp("huey") / "consumer.log",
        stop=signal.SIGINT,
    ) as process:
        hub.wait_for(lambda h: len(services(h, SERVICE)) >= 1, timeout=TIMEOUT)
        yield process


@pytest.fixture(scope="module")
def app(huey_url: str) -> Iterator[ModuleType]:
    """The example's tasks module in this process (not instrumented): the sending side."""
    saved = os.environ.get("HUEY_REDIS_URL")
    os.environ["HUEY_REDIS_URL"] = huey_url
    sys.path.insert(0, str(APP_DIR))
    try:
        yield importlib.import_module("huey_tasks")
    finally:
        sys.path.remove(str(APP_DIR))
        sys.modules.pop("huey_tasks", None)
        if saved is None:
            os.environ.pop("HUEY_REDIS_URL", None)
        else:
            os.environ["HUEY_REDIS_URL"] = saved


def test_each_task_is_a_completed_workflow_named_after_it(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    ids = [app.add(i, i).id for i in range(5)]
    workflows = [settled(hub, task_id, Phase.COMPLETED) for task_id in ids]
    for task_id, workflow in zip(ids, workflows, strict=True):
        assert workflow.action_type == "huey_tasks.add"
        assert workflow.action_id == task_id
    assert_each_logged_adding(hub, [workflow_of(task_id) for task_id in ids])
    (service,) = services(hub, SERVICE)  # the consumer's worker threads: one service instance
    assert {w.service_id for w in workflows} == {service.service_id}
    assert not [a for a in hub.anomalies if "huey-" in a.text], hub.anomalies


def test_a_failing_task_fails_with_its_error(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    workflow = settled(hub, app.fail("boom").id, Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [("ValueError: boom", False)]


def test_a_retried_task_that_succeeds_completes_with_its_failed_attempt_as_an_error(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    workflow = settled(hub, app.flaky(1).id, Phase.COMPLETED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True)
    ]
    assert [c.to_phase for c in workflow.history][2:7] == [
        Phase.EXECUTION,
        Phase.PAUSING,
        Phase.PAUSED,
        Phase.RESUMING,
        Phase.EXECUTION,
    ], workflow.history
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_task_that_exhausts_its_retries_fails(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    workflow = settled(hub, app.flaky(10).id, Phase.FAILED)  # retries=3
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True),
        ("ConnectionError: attempt 2 failed", True),
        ("ConnectionError: attempt 3 failed", True),
        ("ConnectionError: attempt 4 failed", False),
    ]
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_pause_holds_the_task_at_its_safe_point_until_resumed(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    task_id = app.long_job(100, 0.05).id
    settled(hub, task_id, Phase.EXECUTION)
    hub.pause(workflow_of(task_id), "maintenance")
    settled(hub, task_id, Phase.PAUSED)
    hub.resume(workflow_of(task_id))
    workflow = settled(hub, task_id, Phase.COMPLETED)
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_the_hub_cancels_a_task_at_its_safe_point(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    task_id = app.long_job(600, 0.05).id
    settled(hub, task_id, Phase.EXECUTION)
    hub.cancel(workflow_of(task_id), "operator said stop")
    workflow = settled(hub, task_id, Phase.CANCELLED)
    assert any(c.reason == "operator said stop" for c in workflow.history)


def test_a_revoked_task_is_cancelled(hub: ThreadedHub, consumer: Any, app: ModuleType) -> None:
    task = app.add.s(1, 1)
    app.huey.revoke_by_id(task.id)
    app.huey.enqueue(task)
    workflow = settled(hub, task.id, Phase.CANCELLED)
    assert workflow.action_type == "huey_tasks.add"
    assert any(c.reason == "revoked" for c in workflow.history)


def test_a_revoked_retry_is_cancelled(hub: ThreadedHub, consumer: Any, app: ModuleType) -> None:
    task_id = app.retried_later().id
    settled(hub, task_id, Phase.PAUSED)  # waiting for its retry
    app.huey.revoke_by_id(task_id)
    workflow = settled(hub, task_id, Phase.CANCELLED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: not yet", True)
    ]
    assert any(c.reason == "revoked" for c in workflow.history)
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_task_enqueued_from_a_workflow_is_its_child(
    hub: ThreadedHub, consumer: Any, app: ModuleType
) -> None:
    result = app.fan_out(2)
    parent = settled(hub, result.id, Phase.COMPLETED)
    children = result.get(blocking=True, timeout=TIMEOUT)
    for child_id in children:
        child = settled(hub, child_id, Phase.COMPLETED)
        assert child.parent_workflow_id == parent.workflow_id
        assert child.root_workflow_id == parent.workflow_id
