"""RQ end to end: a real Redis, the real hub, and RQ's default forking ``Worker`` run as a user
would (``opentelemetry-instrument rq worker``), with nothing configured but ``WHEN_URL``.

One worker serves the whole module; each test enqueues its own jobs and waits on the hub.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
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

rq = pytest.importorskip("rq")
redis = pytest.importorskip("redis")

APP_DIR = EXAMPLES / "rq_app"
SERVICE = "rq-tests"
RQ = Workflows("rq")
workflow_of = RQ.workflow_of
settled = RQ.settled


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return redis_database(redis_url, 2)  # a database of its own


@pytest.fixture(scope="module")
def worker(
    hub: ThreadedHub, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    with instrumented(
        [str(BIN / "rq"), "worker", "--url", broker],
        cwd=APP_DIR,
        env=instrumented_env(hub.url, SERVICE),
        log_path=tmp_path_factory.mktemp("rq") / "worker.log",
        stop=signal.SIGINT,  # warm shutdown
    ) as process:
        hub.wait_for(lambda h: len(services(h, SERVICE)) >= 1, timeout=TIMEOUT)
        yield process


@pytest.fixture(scope="module")
def queue(broker: str) -> Iterator[Any]:
    connection = redis.Redis.from_url(broker)
    yield rq.Queue(connection=connection)
    connection.close()


def test_each_job_is_a_completed_workflow_from_one_service_instance(
    hub: ThreadedHub, worker: Any, queue: Any
) -> None:
    ids = [queue.enqueue("jobs.add", i, i).id for i in range(5)]
    workflows = [settled(hub, job_id, Phase.COMPLETED) for job_id in ids]
    for job_id, workflow in zip(ids, workflows, strict=True):
        assert workflow.action_type == "jobs.add"
        assert workflow.action_id == job_id
    assert_each_logged_adding(hub, [workflow_of(job_id) for job_id in ids])
    # A work horse per job, and still one service instance: the worker process.
    (service,) = services(hub, SERVICE)
    assert {w.service_id for w in workflows} == {service.service_id}
    assert not [a for a in hub.anomalies if "rq-" in a.text], hub.anomalies


def test_a_failing_job_fails_with_its_error(hub: ThreadedHub, worker: Any, queue: Any) -> None:
    job_id = queue.enqueue("jobs.fail", "boom").id
    workflow = settled(hub, job_id, Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [("ValueError: boom", False)]


def test_a_retried_job_that_succeeds_completes_with_its_failed_attempt_as_an_error(
    hub: ThreadedHub, worker: Any, queue: Any
) -> None:
    job_id = queue.enqueue("jobs.flaky", 1, retry=rq.Retry(max=3)).id
    workflow = settled(hub, job_id, Phase.COMPLETED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True)
    ]
    assert [(c.from_phase, c.to_phase) for c in workflow.history][3:7] == [
        (Phase.EXECUTION, Phase.PAUSING),
        (Phase.PAUSING, Phase.PAUSED),
        (Phase.PAUSED, Phase.RESUMING),
        (Phase.RESUMING, Phase.EXECUTION),
    ], workflow.history
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_job_that_exhausts_its_retries_fails(hub: ThreadedHub, worker: Any, queue: Any) -> None:
    job_id = queue.enqueue("jobs.flaky", 10, retry=rq.Retry(max=2)).id
    workflow = settled(hub, job_id, Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True),
        ("ConnectionError: attempt 2 failed", True),
        ("ConnectionError: attempt 3 failed", False),
    ]
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_the_hub_cancels_a_job_at_its_safe_point(hub: ThreadedHub, worker: Any, queue: Any) -> None:
    job = queue.enqueue("jobs.long_job", 600, 0.05)
    settled(hub, job.id, Phase.EXECUTION)
    hub.cancel(workflow_of(job.id), "operator said stop")
    workflow = settled(hub, job.id, Phase.CANCELLED)
    assert any(c.reason == "operator said stop" for c in workflow.history)


def test_rq_stop_job_cancels_the_workflow(hub: ThreadedHub, worker: Any, queue: Any) -> None:
    from rq.command import send_stop_job_command  # noqa: PLC0415

    job = queue.enqueue("jobs.long_job", 600, 0.05)
    settled(hub, job.id, Phase.EXECUTION)
    send_stop_job_command(queue.connection, job.id)
    workflow = settled(hub, job.id, Phase.CANCELLED)
    assert any(c.reason == "stopped (rq stop-job)" for c in workflow.history)


def test_a_forced_hub_cancel_stops_a_job_without_safe_points(
    hub: ThreadedHub, worker: Any, queue: Any
) -> None:
    job = queue.enqueue("jobs.sleepy", 60)
    settled(hub, job.id, Phase.EXECUTION)
    hub.cancel(workflow_of(job.id), "no time for this", force=True)
    workflow = settled(hub, job.id, Phase.CANCELLED)
    assert any(c.reason == "no time for this" for c in workflow.history)
    assert workflow.anomaly_count == 0, workflow.anomalies
    assert str(job.get_status(refresh=True).value) == "stopped"


def test_a_job_enqueued_from_a_workflow_is_its_child(
    hub: ThreadedHub, worker: Any, queue: Any
) -> None:
    job = queue.enqueue("jobs.fan_out", 2)
    parent = settled(hub, job.id, Phase.COMPLETED)
    children = job.latest_result(timeout=int(TIMEOUT)).return_value
    for child_id in children:
        child = settled(hub, child_id, Phase.COMPLETED)
        assert child.parent_workflow_id == parent.workflow_id
        assert child.root_workflow_id == parent.workflow_id
