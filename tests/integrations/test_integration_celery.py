"""Celery end to end: a real Redis, the real hub, and the example app's worker run exactly as a
user would (``opentelemetry-instrument celery -A tasks worker``, prefork with concurrency 2),
with nothing configured but ``WHEN_URL`` (and exporters pointed at a local OTLP receiver).

One worker serves the whole module; each test sends its own tasks and waits on the hub.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.integrations import (
    BIN,
    EXAMPLES,
    TIMEOUT,
    Workflows,
    assert_each_logged_adding,
    connected,
    instrumented,
    instrumented_env,
    otlp_traces,
    redis_database,
)
from tests.support.otlp_receiver import OtlpReceiver
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

celery = pytest.importorskip("celery")

APP_DIR = EXAMPLES / "celery_app"
SERVICE = "celery-tests"
CELERY = Workflows("celery")
workflow_of = CELERY.workflow_of
settled = CELERY.settled


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return redis_database(redis_url, 1)  # a database of its own


OUR_WARNINGS = (
    "no workflow",
    "cannot report",
    "ending its workflow",
    "reporting a retry",
    "reporting how it ended",
)


@contextmanager
def running_worker(
    hub: ThreadedHub,
    broker: str,
    log_dir: Path,
    service: str,
    pool: tuple[str, ...] = ("--concurrency", "2"),
    **env_overrides: str,
) -> Iterator[subprocess.Popen[str]]:
    """``opentelemetry-instrument celery -A tasks worker`` (prefork, 2 processes, unless
    ``pool`` says otherwise) for the example app, until it is connected to ``hub``."""

    def check_output(output: str) -> None:
        for text in OUR_WARNINGS:
            assert text not in output, output

    with instrumented(
        [
            str(BIN / "celery"),
            "-A",
            "tasks",
            "worker",
            *pool,
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ],
        cwd=APP_DIR,
        env=instrumented_env(
            hub.url, service, ("CELERY_",), CELERY_BROKER_URL=broker, **env_overrides
        ),
        log_path=log_dir / f"{service}.log",
        check_output=check_output,  # SIGTERM: warm shutdown
    ) as process:
        # One connection for the whole worker: pool processes report through the main one.
        hub.wait_for(lambda h: len(connected(h, service)) >= 1, timeout=TIMEOUT)
        yield process


@pytest.fixture(scope="module")
def worker(
    hub: ThreadedHub, receiver: OtlpReceiver, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    """The module's worker: spans to ``receiver``, the contrib Celery instrumentation on."""
    with running_worker(
        hub,
        broker,
        tmp_path_factory.mktemp("celery"),
        SERVICE,
        **otlp_traces(receiver.url),
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client(broker: str) -> Iterator[Any]:
    app = celery.Celery("client", broker=broker, backend=broker)
    yield app
    app.close()


def test_each_task_is_a_completed_workflow_named_after_it(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    ids = [client.send_task("tasks.add", args=(i, i)).id for i in range(5)]
    workflows = [settled(hub, task_id, Phase.COMPLETED) for task_id in ids]
    services = {s.service_id: s for s in hub.services.values() if s.service_name == SERVICE}
    for task_id, workflow in zip(ids, workflows, strict=True):
        assert workflow.action_type == "tasks.add"
        assert workflow.action_id == task_id
        assert workflow.service_id in services
        assert [c.to_phase for c in workflow.history][-2:] == [Phase.COMPLETING, Phase.COMPLETED]
    # The tasks' log records are at the hub under their workflows.
    assert_each_logged_adding(hub, [workflow_of(task_id) for task_id in ids])
    # Never a service per task or per pool process: the worker is one service instance.
    assert len(services) == 1, [(s.service_id, s.instance_id) for s in services.values()]
    assert not [a for a in hub.anomalies if "celery-" in a.text], hub.anomalies


def test_a_failing_task_fails_with_its_error(hub: ThreadedHub, worker: Any, client: Any) -> None:
    task_id = client.send_task("tasks.fail", args=("boom",)).id
    workflow = settled(hub, task_id, Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [("ValueError: boom", False)]
    assert workflow.reason == "ValueError: boom"


def test_a_retried_task_that_succeeds_completes_with_its_failed_attempt_as_an_error(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    task_id = client.send_task("tasks.flaky", args=(1,)).id
    workflow = settled(hub, task_id, Phase.COMPLETED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True)
    ]
    phases = [c.to_phase for c in workflow.history]
    # The attempt waits paused for its retry, then the next attempt resumes the same workflow.
    assert phases == [
        Phase.PRE_FLIGHT,
        Phase.PLANNING,
        Phase.EXECUTION,
        Phase.PAUSING,
        Phase.PAUSED,
        Phase.RESUMING,
        Phase.EXECUTION,
        Phase.COMPLETING,
        Phase.COMPLETED,
    ]
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_task_that_exhausts_its_retries_fails(hub: ThreadedHub, worker: Any, client: Any) -> None:
    task_id = client.send_task("tasks.flaky", args=(10,)).id  # max_retries=3
    workflow = settled(hub, task_id, Phase.FAILED)
    recoverable = [e for e in workflow.errors if e.recoverable]
    assert len(recoverable) == 3
    last = workflow.errors[-1]
    assert (last.error, last.recoverable) == ("ConnectionError: attempt 4 failed", False)
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_the_hub_cancels_a_task_at_its_safe_point(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    task_id = client.send_task("tasks.long_job", args=(600, 0.05)).id
    settled(hub, task_id, Phase.EXECUTION)
    # As an operator would: the command line, with the id derived from the task's.
    done = subprocess.run(
        [str(BIN / "when-coordinator"), "cancel", "--hub", hub.http_url, workflow_of(task_id)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = settled(hub, task_id, Phase.CANCELLED)
    assert workflow.history[-2].to_phase is Phase.CANCELLING


def test_the_hub_pauses_and_resumes_a_task_at_its_safe_points(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    result = client.send_task("tasks.long_job", args=(20, 0.05))
    settled(hub, result.id, Phase.EXECUTION)
    hub.pause(workflow_of(result.id), "hold on")
    settled(hub, result.id, Phase.PAUSED)
    assert not result.ready()  # held at its safe point, in its pool slot
    hub.resume(workflow_of(result.id))
    assert result.get(timeout=TIMEOUT) == 20
    workflow = settled(hub, result.id, Phase.COMPLETED)
    assert Phase.RESUMING in [c.to_phase for c in workflow.history]


def test_abortable_task_sees_a_hub_cancel_and_a_native_abort_cancels(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    from celery.contrib.abortable import AbortableAsyncResult  # noqa: PLC0415

    by_hub = client.send_task("tasks.abortable_job", args=(600, 0.05)).id
    settled(hub, by_hub, Phase.EXECUTION)
    hub.cancel(workflow_of(by_hub), "from the hub")
    assert AbortableAsyncResult(by_hub, app=client).get(timeout=TIMEOUT) < 600
    settled(hub, by_hub, Phase.CANCELLED)

    natively = client.send_task("tasks.abortable_job", args=(600, 0.05)).id
    settled(hub, natively, Phase.EXECUTION)
    AbortableAsyncResult(natively, app=client).abort()
    workflow = settled(hub, natively, Phase.CANCELLED)
    assert any(c.reason == "aborted (AbortableTask)" for c in workflow.history)


# The span checks run before the tests that revoke, terminate or kill: those make the worker's
# main process export spans and fork new pool processes afterwards, which then share its OTLP
# HTTP keep-alive connection (opentelemetry-python#4994, docs/integrations/celery.md), so an
# export of theirs may be lost.
def test_a_task_sent_from_a_workflow_is_its_child(
    hub: ThreadedHub, worker: Any, client: Any, receiver: OtlpReceiver
) -> None:
    result = client.send_task("tasks.fan_out", args=(2,))
    parent = settled(hub, result.id, Phase.COMPLETED)
    children = result.get(timeout=TIMEOUT)
    for child_id in children:
        child = settled(hub, child_id, Phase.COMPLETED)
        assert child.parent_workflow_id == parent.workflow_id
        assert child.root_workflow_id == parent.workflow_id
    hub.wait_for(
        lambda h: (
            set(h.workflows[parent.workflow_id].children) >= {workflow_of(c) for c in children}
        ),
        timeout=TIMEOUT,
    )

    # Spans: the workflow span is an INTERNAL child of the contrib Celery consumer span.
    def workflow_span(r: OtlpReceiver, task_id: str) -> Any:
        return next(
            (s for s in r.spans if s.attributes.get("when.workflow.id") == workflow_of(task_id)),
            None,
        )

    receiver.wait_for(
        lambda r: all(workflow_span(r, t) for t in (result.id, *children)), timeout=TIMEOUT
    )
    by_id = {s.span_id: s for s in receiver.spans}
    for task_id in (result.id, *children):
        span = workflow_span(receiver, task_id)
        assert span.span.kind == span.span.SPAN_KIND_INTERNAL
        consumer = by_id[span.parent_span_id]
        assert consumer.span.kind == consumer.span.SPAN_KIND_CONSUMER
        assert consumer.name.startswith("run/tasks.")


def test_a_revoked_task_is_cancelled(hub: ThreadedHub, worker: Any, client: Any) -> None:
    task_id = "revoked-before-it-ran"
    client.control.revoke(task_id)
    client.send_task("tasks.add", args=(1, 1), task_id=task_id)
    workflow = settled(hub, task_id, Phase.CANCELLED)
    assert workflow.action_type == "tasks.add"
    assert any(c.reason == "revoked" for c in workflow.history)


def test_a_task_terminated_while_running_is_cancelled(
    hub: ThreadedHub, worker: Any, client: Any
) -> None:
    task_id = client.send_task("tasks.long_job", args=(600, 0.05)).id
    settled(hub, task_id, Phase.EXECUTION)
    client.control.revoke(task_id, terminate=True)
    workflow = settled(hub, task_id, Phase.CANCELLED)
    assert workflow.reason == "cancelled"
    assert any(c.reason.startswith("revoked: terminated by signal") for c in workflow.history)
    assert workflow.anomaly_count == 0, workflow.anomalies
    assert len(connected(hub, SERVICE)) == 1


def test_a_task_whose_process_dies_fails(hub: ThreadedHub, worker: Any, client: Any) -> None:
    task_id = client.send_task("tasks.crash").id
    workflow = settled(hub, task_id, Phase.FAILED)
    assert workflow.reason.startswith("WorkerLostError: "), workflow.reason
    assert workflow.anomaly_count == 0, workflow.anomalies
    assert len(connected(hub, SERVICE)) == 1


def test_without_the_contrib_instrumentation_children_still_link_and_spans_are_roots(
    hub: ThreadedHub,
    receiver: OtlpReceiver,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    broker = redis_database(redis_url, 3)  # not the module worker's queue
    with running_worker(
        hub,
        broker,
        tmp_path_factory.mktemp("plain"),
        "celery-plain",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="celery",
        **otlp_traces(receiver.url),
        OTEL_BSP_SCHEDULE_DELAY="100",
    ):
        app = celery.Celery("plain-client", broker=broker, backend=broker)
        try:
            result = app.send_task("tasks.fan_out", args=(1,))
            parent = settled(hub, result.id, Phase.COMPLETED)
            (child_id,) = result.get(timeout=TIMEOUT)
        finally:
            app.close()
        child = settled(hub, child_id, Phase.COMPLETED)
        assert child.parent_workflow_id == parent.workflow_id

    def spans(r: OtlpReceiver) -> list[Any]:
        keys = {workflow_of(result.id), workflow_of(child_id)}
        return [s for s in r.spans if s.attributes.get("when.workflow.id") in keys]

    receiver.wait_for(lambda r: len(spans(r)) == 2, timeout=TIMEOUT)
    for span in spans(receiver):
        assert span.parent_span_id == "", "without the contrib consumer span: a root"


def test_the_solo_pool_runs_tasks_as_workflows_too(
    hub: ThreadedHub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    broker = redis_database(redis_url, 4)
    with running_worker(
        hub, broker, tmp_path_factory.mktemp("solo"), "celery-solo", ("-P", "solo")
    ):
        app = celery.Celery("solo-client", broker=broker, backend=broker)
        try:
            ok = app.send_task("tasks.add", args=(2, 3))
            retried = app.send_task("tasks.flaky", args=(1,))
            assert ok.get(timeout=TIMEOUT) == 5
            settled(hub, ok.id, Phase.COMPLETED)
            workflow = settled(hub, retried.id, Phase.COMPLETED)
        finally:
            app.close()
    assert [e.recoverable for e in workflow.errors] == [True]
    assert [s.service_name for s in hub.services.values()].count("celery-solo") == 1
