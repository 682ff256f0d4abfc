"""The relay a worker process runs for its forked children (``integrations.relay``), in
process: a child's traffic reaches the real hub on the worker's connection, the hub's commands
come back to the child, bad frames are dropped and counted, and only children get in."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.scripted_server import wait_until
from when_coordinator import Config, Coordinator
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel import set_coordinator
from when_coordinator.otel.integrations.relay import (
    CHILD_WRITE_DELAY,
    ORDER_WAIT,
    POOL_WRITE_DELAY,
    Relay,
    report_through,
)
from when_coordinator.otel.tracking import get_coordinator
from when_coordinator.protocol import (
    ErrorPayload,
    Message,
    MessageType,
    Phase,
    PhaseChangedPayload,
    RegisterPayload,
    StatusResponsePayload,
    WorkflowCreatedPayload,
    decode,
    encode,
)

TIMEOUT = 10.0


@pytest.fixture
def relay(otel_coordinator: Coordinator) -> Iterator[Relay]:
    running = Relay(otel_coordinator)
    running.start()
    yield running
    running.close()


async def child_session(relay: Relay, hub: ThreadedHub) -> Message:
    """Speak as a child: bad frames, a workflow, then wait for the hub's cancel."""
    headers = {"Authorization": f"Bearer {relay.token}"}
    async with connect(relay.url, additional_headers=headers) as ws:
        await ws.send(encode(Message.create(RegisterPayload(service_name="child"))))
        registered = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert registered.type is MessageType.REGISTERED
        await ws.send("not json at all")
        await ws.send('{"type": "progress", "id": 5}')
        await ws.send(encode(Message.create(WorkflowCreatedPayload(workflow_id="wf-child"))))
        for source, target in (
            (None, Phase.PRE_FLIGHT),
            (Phase.PRE_FLIGHT, Phase.PLANNING),
            (Phase.PLANNING, Phase.EXECUTION),
        ):
            payload = PhaseChangedPayload("wf-child", source or Phase.PENDING, target)
            await ws.send(encode(Message.create(payload)))
        await asyncio.to_thread(
            hub.wait_for,
            lambda h: (
                "wf-child" in h.workflows and h.workflows["wf-child"].phase is Phase.EXECUTION
            ),
            TIMEOUT,
        )
        # The hub asks for its status: the child answers, through the relay.
        asking = asyncio.create_task(asyncio.to_thread(hub.status, "wf-child", TIMEOUT))
        status = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert status.type is MessageType.STATUS
        reply = StatusResponsePayload("wf-child", Phase.EXECUTION, 42.0, "step", "busy")
        await ws.send(encode(status.reply(reply)))
        answered = await asyncio.wait_for(asking, TIMEOUT)
        assert (answered.phase, answered.progress) == (Phase.EXECUTION, 42.0)
        await asyncio.to_thread(hub.cancel, "wf-child", "from the hub")
        return decode(await asyncio.wait_for(ws.recv(), TIMEOUT))


def test_a_child_speaks_to_the_hub_through_the_relay(
    relay: Relay, otel_hub: ThreadedHub, otel_coordinator: Coordinator
) -> None:
    command = asyncio.run(child_session(relay, otel_hub))
    assert command.type is MessageType.CANCEL
    assert command.payload["workflow_id"] == "wf-child"
    assert command.payload["reason"] == "from the hub"
    assert relay.dropped == 2
    assert relay.phase_of("wf-child") == "execution"
    workflow = otel_hub.workflows["wf-child"]
    # On the worker's own connection: the hub sees one service instance.
    assert workflow.service_id == otel_coordinator.service_id
    assert [s.service_name for s in otel_hub.services.values()] == ["otel-tests"]


def test_only_children_of_the_worker_get_in(relay: Relay) -> None:
    async def intrude(token: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(relay.url, additional_headers=headers):
            pass

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(intrude("guessed"))
    assert refused.value.response.status_code == 401


async def registered_child(relay: Relay) -> ClientConnection:
    ws = await connect(relay.url, additional_headers={"Authorization": f"Bearer {relay.token}"})
    await ws.send(encode(Message.create(RegisterPayload(service_name="child"))))
    assert decode(await asyncio.wait_for(ws.recv(), TIMEOUT)).type is MessageType.REGISTERED
    return ws


async def send_phases(ws: ClientConnection, workflow_id: str, *phases: Phase) -> None:
    for source, target in itertools.pairwise(phases):
        await ws.send(encode(Message.create(PhaseChangedPayload(workflow_id, source, target))))


async def hub_at(
    hub: ThreadedHub, workflow_id: str, phase: Phase, timeout: float = TIMEOUT
) -> None:
    """Wait (off the loop) until the hub has ``workflow_id`` in ``phase``."""
    await asyncio.to_thread(
        hub.wait_for,
        lambda h: workflow_id in h.workflows and h.workflows[workflow_id].phase is phase,
        timeout,
    )


async def announce(
    ws: ClientConnection, hub: ThreadedHub, workflow_id: str, *phases: Phase
) -> None:
    """A child announces ``workflow_id`` and walks it through ``phases``, as far as the hub."""
    await ws.send(encode(Message.create(WorkflowCreatedPayload(workflow_id=workflow_id))))
    await send_phases(ws, workflow_id, *phases)
    await hub_at(hub, workflow_id, phases[-1])


def test_a_retry_in_another_child_reaches_the_hub_after_the_attempt_before(
    relay: Relay, otel_hub: ThreadedHub
) -> None:
    """The next attempt of a retried task may run (even finish) in another pool process
    before the process of the attempt before has reported its retry: the hub still sees the
    workflow's phases in order, the failed attempt's error included."""

    async def scenario() -> None:
        first, second = await registered_child(relay), await registered_child(relay)
        await announce(
            first,
            otel_hub,
            "wf-retry",
            Phase.PENDING,
            Phase.PRE_FLIGHT,
            Phase.PLANNING,
            Phase.EXECUTION,
        )
        # The next attempt, in the other child, runs to the end first...
        await send_phases(
            second,
            "wf-retry",
            Phase.PAUSED,
            Phase.RESUMING,
            Phase.EXECUTION,
            Phase.COMPLETING,
            Phase.COMPLETED,
        )
        await asyncio.to_thread(wait_until, lambda: relay.held == 1, TIMEOUT, "a held report")
        # ... and only then does the first child report its retry.
        error = ErrorPayload("wf-retry", "ConnectionError: attempt 1 failed", True)
        await first.send(encode(Message.create(error)))
        await send_phases(first, "wf-retry", Phase.EXECUTION, Phase.PAUSING, Phase.PAUSED)
        await hub_at(otel_hub, "wf-retry", Phase.COMPLETED)
        await first.close()
        await second.close()

    asyncio.run(scenario())
    workflow = otel_hub.workflows["wf-retry"]
    assert [c.to_phase for c in workflow.history] == [
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
    assert [(e.error, e.recoverable) for e in workflow.errors] == [
        ("ConnectionError: attempt 1 failed", True)
    ]
    assert workflow.anomaly_count == 0, workflow.anomalies
    assert relay.held == 0


def test_reports_held_when_their_child_leaves_still_go_out_in_order(
    relay: Relay, otel_hub: ThreadedHub
) -> None:
    """A child whose reports wait behind another child's disconnects before they may go:
    they still reach the hub in their turn, and the child that left owns nothing after: a
    third child's report that does not continue from the last phase (here, its ``resuming``
    was lost) is not held for it."""

    async def scenario() -> None:
        first, second = await registered_child(relay), await registered_child(relay)
        await announce(first, otel_hub, "wf-left", Phase.PENDING, Phase.PRE_FLIGHT, Phase.PLANNING)
        # The second child's reports continue from execution, which the first has not sent.
        await send_phases(second, "wf-left", Phase.EXECUTION, Phase.PAUSING, Phase.PAUSED)
        await asyncio.to_thread(wait_until, lambda: relay.held == 1, TIMEOUT, "a held report")
        await second.close()
        await send_phases(first, "wf-left", Phase.PLANNING, Phase.EXECUTION)
        await hub_at(otel_hub, "wf-left", Phase.PAUSED)
        await first.close()
        await asyncio.to_thread(wait_until, lambda: relay.held == 0, TIMEOUT, "nothing held")
        third = await registered_child(relay)
        await send_phases(third, "wf-left", Phase.RESUMING, Phase.EXECUTION)
        # Far sooner than a held report's bound.
        await hub_at(otel_hub, "wf-left", Phase.EXECUTION, ORDER_WAIT / 2)
        await third.close()

    asyncio.run(scenario())
    workflow = otel_hub.workflows["wf-left"]
    assert [c.to_phase for c in workflow.history] == [
        Phase.PRE_FLIGHT,
        Phase.PLANNING,
        Phase.EXECUTION,
        Phase.PAUSING,
        Phase.PAUSED,
        Phase.EXECUTION,
    ]
    assert workflow.anomaly_count == 1, workflow.anomalies  # the lost ``resuming``


def test_a_report_whose_owner_is_gone_is_not_held(relay: Relay, otel_hub: ThreadedHub) -> None:
    """The child that owned the workflow ended (killed under its task): another child's
    report about it is forwarded at once, with nothing to wait for."""

    async def scenario() -> None:
        first = await registered_child(relay)
        await announce(first, otel_hub, "wf-lost", Phase.PENDING, Phase.PRE_FLIGHT, Phase.PLANNING)
        await first.close()
        second = await registered_child(relay)
        await send_phases(second, "wf-lost", Phase.PAUSED, Phase.RESUMING)
        # Far sooner than a held report's bound.
        await hub_at(otel_hub, "wf-lost", Phase.RESUMING, ORDER_WAIT / 2)
        await second.close()

    asyncio.run(scenario())


def test_a_childs_message_reaches_the_hub_exactly_as_the_child_encoded_it(
    relay: Relay, otel_hub: ThreadedHub
) -> None:
    """The hub gets it unchanged (passed through): same id, same timestamp, every field."""
    created = Message.create(
        WorkflowCreatedPayload(
            workflow_id="wf-through",
            parent_workflow_id="wf-parent",
            root_workflow_id="wf-root",
            action_id="task-1",
            action_type="tasks.add",
        )
    )

    async def scenario() -> None:
        child = await registered_child(relay)
        await child.send(encode(created))
        await asyncio.to_thread(otel_hub.wait_for, lambda h: "wf-through" in h.workflows, TIMEOUT)
        await child.close()

    asyncio.run(scenario())
    (received,) = [r.message for r in otel_hub.received if r.message.id == created.id]
    assert encode(received) == encode(created)
    assert relay.dropped == 0


def test_send_frame_refuses_what_the_hub_would_close_the_connection_for(
    otel_coordinator: Coordinator,
) -> None:
    limit = otel_coordinator.config.max_frame_bytes
    before = otel_coordinator.stats().dropped
    assert not otel_coordinator.send_frame("x" * (limit + 1), MessageType.LOG_BATCH)
    assert otel_coordinator.stats().dropped == before + 1
    with pytest.raises(TypeError):
        otel_coordinator.send_frame(b"{}", MessageType.LOG)  # type: ignore[arg-type]


def test_send_frames_queues_each_in_order_and_counts_what_it_refuses(
    otel_coordinator: Coordinator, otel_hub: ThreadedHub
) -> None:
    """What the relay passes on from one read of a child: queued together (one wake-up of the
    client's thread, ``Outbox.wakeups_held``), each frame on its own, in order."""
    created = [
        Message.create(WorkflowCreatedPayload(workflow_id=f"wf-batch-{i}")) for i in range(3)
    ]
    batch = [(encode(m), MessageType.WORKFLOW_CREATED, "") for m in created]
    too_big = ("x" * (otel_coordinator.config.max_frame_bytes + 1), MessageType.LOG_BATCH, "")
    before = otel_coordinator.stats().dropped
    assert otel_coordinator.send_frames([batch[0], too_big, batch[1], batch[2]]) == 3
    assert otel_coordinator.stats().dropped == before + 1
    otel_hub.wait_for(lambda h: "wf-batch-2" in h.workflows, TIMEOUT)
    ids = {m.id for m in created}
    assert [r.message.id for r in otel_hub.received if r.message.id in ids] == [
        m.id for m in created
    ]


def _announced_by_a_child(
    relay: Relay, hub: ThreadedHub, write_delay: float, ids: list[str]
) -> Config:
    """A child of ``relay`` announces ``ids`` (well within one write delay: one write) and the
    hub has them all; returns the child's configuration."""
    previous = get_coordinator()
    child = report_through(relay.url, relay.token, write_delay=write_delay)
    try:
        for workflow_id in ids:
            child.send_workflow_created(workflow_id, action_type="tasks.add")
        assert child.flush(TIMEOUT)
        hub.wait_for(lambda h: all(i in h.workflows for i in ids), TIMEOUT)
        return child.config
    finally:
        set_coordinator(previous)
        child.close(timeout=5)


@pytest.mark.parametrize("write_delay", [CHILD_WRITE_DELAY, POOL_WRITE_DELAY])
def test_a_child_reports_with_the_write_delay_it_was_given(
    relay: Relay, otel_hub: ThreadedHub, write_delay: float
) -> None:
    """A pool process running task after task gathers its reports for ``POOL_WRITE_DELAY``
    (one write, one wake-up of the worker, for many tasks); a one-job child keeps the short
    default, its exit waiting for the last write. Either way every report arrives."""
    ids = [f"wf-delay-{write_delay}-{i}" for i in range(5)]
    assert _announced_by_a_child(relay, otel_hub, write_delay, ids).write_delay == write_delay


def test_a_childs_write_comes_in_one_frame_and_reaches_the_hub_message_by_message(
    relay: Relay, otel_hub: ThreadedHub
) -> None:
    """A child joins each write's reports into one frame (``Config.joined_frames``, accepted by
    the relay); the relay splits it and the hub gets every report on its own, in order."""
    ids = [f"wf-joined-{i}" for i in range(40)]
    assert _announced_by_a_child(relay, otel_hub, POOL_WRITE_DELAY, ids).joined_frames
    created = [
        r.message.workflow_id
        for r in otel_hub.received
        if r.message.type is MessageType.WORKFLOW_CREATED and r.message.workflow_id in ids
    ]
    assert created == ids
    assert relay.joined >= 1
    assert relay.dropped == 0
