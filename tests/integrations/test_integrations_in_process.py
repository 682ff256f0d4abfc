"""Dramatiq and Huey instrumented in this process, against the real hub: a task run is a
workflow, and after ``uninstrument()`` the middleware and signal receiver already attached to a
broker or Huey instance rest."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from when_coordinator import Coordinator, workflow
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import set_coordinator
from when_coordinator.otel.integrations.tasks import task_workflow_id
from when_coordinator.protocol import Phase


@pytest.fixture
def reporting(otel_coordinator: Coordinator) -> Iterator[Coordinator]:
    previous = set_coordinator(otel_coordinator)
    yield otel_coordinator
    set_coordinator(previous)


def completed(hub: ThreadedHub, key: str) -> None:
    hub.wait_for(
        lambda h: key in h.workflows and h.workflows[key].phase is Phase.COMPLETED, timeout=10
    )


def hub_has_seen_all(coordinator: Coordinator, hub: ThreadedHub) -> None:
    """A marker workflow sent after everything else: once the hub has it, it has the rest."""
    with workflow("marker", coordinator=coordinator) as marker:
        pass
    completed(hub, marker.id)


def test_huey_rests_after_uninstrument(reporting: Coordinator, otel_hub: ThreadedHub) -> None:
    huey_api = pytest.importorskip("huey")
    from when_coordinator.otel.integrations.huey import WhenHueyInstrumentor  # noqa: PLC0415

    instrumentor = WhenHueyInstrumentor()
    instrumentor.instrument()
    try:
        huey = huey_api.MemoryHuey("in-process", immediate=True)

        @huey.task()  # type: ignore[untyped-decorator]
        def double(x: int) -> int:
            return 2 * x

        first = double(2)
        key = task_workflow_id("huey", first.id)
        completed(otel_hub, key)
        assert otel_hub.workflows[key].action_type.endswith(".double")
    finally:
        instrumentor.uninstrument()
    later = double(3)
    assert later() == 6
    hub_has_seen_all(reporting, otel_hub)
    assert task_workflow_id("huey", later.id) not in otel_hub.workflows


def test_dramatiq_rests_after_uninstrument(reporting: Coordinator, otel_hub: ThreadedHub) -> None:
    dramatiq = pytest.importorskip("dramatiq")
    from dramatiq.brokers.stub import StubBroker  # noqa: PLC0415

    from when_coordinator.otel.integrations.dramatiq import (  # noqa: PLC0415
        WhenDramatiqInstrumentor,
    )

    instrumentor = WhenDramatiqInstrumentor()
    instrumentor.instrument()
    broker: Any = StubBroker()  # made while instrumented: it has the middleware
    dramatiq.set_broker(broker)
    seen: list[int] = []

    @dramatiq.actor(broker=broker)  # type: ignore[untyped-decorator]
    def note(x: int) -> None:
        seen.append(x)

    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        first = note.send(1)
        broker.join(note.queue_name)
        worker.join()
        completed(otel_hub, task_workflow_id("dramatiq", first.message_id))
    finally:
        instrumentor.uninstrument()
    try:
        later = note.send(2)
        broker.join(note.queue_name)
        worker.join()
    finally:
        worker.stop()
    assert seen == [1, 2]
    hub_has_seen_all(reporting, otel_hub)
    assert task_workflow_id("dramatiq", later.message_id) not in otel_hub.workflows
