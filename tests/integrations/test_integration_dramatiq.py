"""Dramatiq end to end: a real Redis, the real hub, and the example's worker processes run as a
user would (``opentelemetry-instrument dramatiq actors``), with nothing configured but
``WHEN_URL``.

One worker (two processes, as Dramatiq forks them) serves the whole module; each test sends its
own messages and waits on the hub.
"""

from __future__ import annotations

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
    connected,
    instrumented,
    instrumented_env,
    redis_database,
)
from when_coordinator.hub import ThreadedHub
from when_coordinator.protocol import Phase

dramatiq = pytest.importorskip("dramatiq")
dramatiq_abort = pytest.importorskip("dramatiq_abort")
pytest.importorskip("redis")

APP_DIR = EXAMPLES / "dramatiq_app"
SERVICE = "dramatiq-tests"
DRAMATIQ = Workflows("dramatiq")
workflow_of = DRAMATIQ.workflow_of
settled = DRAMATIQ.settled


@pytest.fixture(scope="module")
def broker_url(redis_url: str) -> str:
    return redis_database(redis_url, 3)  # a database of its own


@pytest.fixture(scope="module")
def worker(
    hub: ThreadedHub, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[str]]:
    with instrumented(
        [str(BIN / "dramatiq"), "actors", "--processes", "2", "--threads", "2"],
        cwd=APP_DIR,
        env=instrumented_env(hub.url, SERVICE, ("DRAMATIQ_",), DRAMATIQ_BROKER_URL=broker_url),
        log_path=tmp_path_factory.mktemp("dramatiq") / "worker.log",
    ) as process:
        # The command's main process registers; its worker processes report through its relay.
        hub.wait_for(lambda h: len(connected(h, SERVICE)) >= 1, timeout=TIMEOUT)
        yield process


@pytest.fixture(scope="module")
def broker(broker_url: str) -> Iterator[Any]:
    from dramatiq.brokers.redis import RedisBroker  # noqa: PLC0415

    running = RedisBroker(url=broker_url)  # type: ignore[no-untyped-call]
    yield running
    running.close()


def send(broker: Any, actor: str, *args: Any) -> str:
    message = dramatiq.Message(
        queue_name="default", actor_name=actor, args=args, kwargs={}, options={}
    )
    return str(broker.enqueue(message).message_id)


def test_each_message_is_a_completed_workflow_named_after_its_actor(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    ids = [send(broker, "add", i, i) for i in range(5)]
    workflows = [settled(hub, message_id, Phase.COMPLETED) for message_id in ids]
    services = {s.service_id: s for s in hub.services.values() if s.service_name == SERVICE}
    for message_id, workflow in zip(ids, workflows, strict=True):
        assert workflow.action_type == "add"
        assert workflow.action_id == message_id
        assert workflow.service_id in services
    assert_each_logged_adding(hub, [workflow_of(message_id) for message_id in ids])
    # The main process and its two worker processes (through its relay): one service instance,
    # so whichever process runs a retry, the workflow stays with its owner.
    assert len(services) == 1, [(s.service_id, s.instance_id) for s in services.values()]
    assert not [a for a in hub.anomalies if "dramatiq-" in a.text], hub.anomalies


def test_a_failing_message_fails_with_its_error(hub: ThreadedHub, worker: Any, broker: Any) -> None:
    workflow = settled(hub, send(broker, "fail", "boom"), Phase.FAILED)
    assert [(e.error, e.recoverable) for e in workflow.errors] == [("ValueError: boom", False)]


def test_a_retried_message_that_succeeds_completes_with_its_failed_attempt_as_an_error(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    workflow = settled(hub, send(broker, "flaky", 1), Phase.COMPLETED)
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


def test_a_message_that_exhausts_its_retries_fails(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    workflow = settled(hub, send(broker, "flaky", 10), Phase.FAILED)  # max_retries=3
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True),
        ("ConnectionError: attempt 2 failed", True),
        ("ConnectionError: attempt 3 failed", True),
        ("ConnectionError: attempt 4 failed", False),
    ]
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_a_pause_holds_the_task_at_its_safe_point_until_resumed(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    task_id = send(broker, "long_job", 100, 0.05)
    settled(hub, task_id, Phase.EXECUTION)
    hub.pause(workflow_of(task_id), "maintenance")
    settled(hub, task_id, Phase.PAUSED)
    hub.resume(workflow_of(task_id))
    workflow = settled(hub, task_id, Phase.COMPLETED)
    assert workflow.anomaly_count == 0, workflow.anomalies


def test_the_hub_cancels_an_actor_at_its_safe_point(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    message_id = send(broker, "long_job", 600, 0.05)
    settled(hub, message_id, Phase.EXECUTION)
    hub.cancel(workflow_of(message_id), "operator said stop")
    workflow = settled(hub, message_id, Phase.CANCELLED)
    assert any(c.reason == "operator said stop" for c in workflow.history)


def test_dramatiq_abort_is_bridged_both_ways(hub: ThreadedHub, worker: Any, broker: Any) -> None:
    from dramatiq_abort import Abortable  # noqa: PLC0415
    from dramatiq_abort.backends import RedisBackend  # noqa: PLC0415

    # A hub cancel of an actor without safe points: dramatiq-abort interrupts it.
    by_hub = send(broker, "sleepy", 60)
    settled(hub, by_hub, Phase.EXECUTION)
    hub.cancel(workflow_of(by_hub), "no time for this", force=True)
    workflow = settled(hub, by_hub, Phase.CANCELLED)
    assert any(c.reason == "no time for this" for c in workflow.history)
    assert workflow.anomaly_count == 0, workflow.anomalies

    # A hub cancel is what abort_requested() reports: an actor that stops then is cancelled.
    polite = send(broker, "polite", 60)
    settled(hub, polite, Phase.EXECUTION)
    hub.cancel(workflow_of(polite), "please stop")
    workflow = settled(hub, polite, Phase.CANCELLED)
    assert any(c.reason == "please stop" for c in workflow.history)
    hub.wait_for(lambda h: bool(h.logs_for(workflow_of(polite))), timeout=TIMEOUT)
    logs = [r.entry.message for r in hub.logs_for(workflow_of(polite))]
    assert "abort requested: stopping" in logs

    # A native abort ends the workflow cancelled.
    natively = send(broker, "sleepy", 60)
    settled(hub, natively, Phase.EXECUTION)
    Abortable(backend=RedisBackend(client=broker.client)).abort(natively)
    workflow = settled(hub, natively, Phase.CANCELLED)
    assert any(c.reason == "aborted (dramatiq-abort)" for c in workflow.history)


def test_a_message_sent_from_a_workflow_is_its_child(
    hub: ThreadedHub, worker: Any, broker: Any
) -> None:
    parent = settled(hub, send(broker, "fan_out", 2), Phase.COMPLETED)
    hub.wait_for(lambda h: len(h.workflows[parent.workflow_id].children) == 2, timeout=TIMEOUT)
    children = list(hub.workflows[parent.workflow_id].children)
    hub.wait_for(
        lambda h: all(h.workflows[c].phase is Phase.COMPLETED for c in children), timeout=TIMEOUT
    )
    for child_id in children:
        child = hub.workflows[child_id]
        assert child.action_type == "add"
        assert child.parent_workflow_id == parent.workflow_id
        assert child.root_workflow_id == parent.workflow_id
