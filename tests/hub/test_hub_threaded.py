"""The hub on a background thread, used from plain synchronous code."""

from __future__ import annotations

import concurrent.futures
import json
import socket
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from when_coordinator.hub import Hub, StatusTimeout, ThreadedHub, WorkflowNotFound
from when_coordinator.hub.testing import frame
from when_coordinator.protocol import Phase


def sync_register(ws: ClientConnection, service_id: str) -> None:
    register = {"service_name": service_id, "service_id": service_id, "capabilities": None}
    ws.send(json.dumps(frame("register", payload=register)))
    assert json.loads(ws.recv(timeout=5))["type"] == "registered"


def receive(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(ws.recv(timeout=5))
        if message["type"] == kind:
            return message


def test_the_threaded_hub_serves_and_commands_synchronously() -> None:
    with ThreadedHub(Hub(port=0)) as hub:
        assert hub.url == f"ws://127.0.0.1:{hub.port}/v1/coordination"
        ws = connect(hub.url, additional_headers={"X-Service-Name": "sync-svc"}, proxy=None)
        with ws:
            sync_register(ws, "sync-svc")
            check_commands(hub, ws)
        hub.wait_for(lambda h: not h.services["sync-svc"].connected)
        assert hub.services["sync-svc"].health == "disconnected"
    assert not hub.hub.running
    assert hub.services["sync-svc"].connections == 1  # still readable after the hub stopped


def check_commands(hub: ThreadedHub, ws: ClientConnection) -> None:
    change = {"workflow_id": "wf-t", "from": "planning", "to": "execution"}
    ws.send(json.dumps(frame("phase_changed", "wf-t", change)))
    workflow = hub.wait_for(lambda h: h.workflows["wf-t"])
    assert workflow.phase is Phase.EXECUTION

    # Reads are snapshots: changing one does not change the hub.
    workflow.phase = Phase.FAILED
    assert hub.workflows["wf-t"].phase is Phase.EXECUTION
    assert [r.message.type for r in hub.received] == ["register", "phase_changed"]

    sent = hub.pause("wf-t", "sync pause")
    assert receive(ws, "pause")["id"] == sent.id
    with pytest.raises(WorkflowNotFound):
        hub.cancel("wf-unknown")

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.status, "wf-t")
        asked = receive(ws, "status")
        answer = {"workflow_id": "wf-t", "phase": "pausing", "progress": 12}
        ws.send(json.dumps(frame("status_response", "wf-t", answer, id=asked["id"])))
        assert pending.result(5).phase is Phase.PAUSING
    with pytest.raises(StatusTimeout):
        hub.status("wf-t", timeout=0.1)


def test_wait_for_times_out_with_the_predicate_in_the_message() -> None:
    with ThreadedHub(Hub()) as hub, pytest.raises(TimeoutError, match="never-there"):
        hub.wait_for(lambda h: "never-there" in h.workflows, timeout=0.05)


def test_a_start_failure_is_raised_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            ThreadedHub(Hub(port=port)).start()
