"""The relay a worker process runs for its forked children (``integrations.relay``), in
process: a child's traffic reaches the real hub on the worker's connection, the hub's commands
come back to the child, bad frames are dropped and counted, and only children get in."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from when_coordinator import Coordinator
from when_coordinator.hub import ThreadedHub
from when_coordinator.otel.integrations.relay import Relay
from when_coordinator.protocol import (
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
