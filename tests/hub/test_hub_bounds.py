"""The hub's memory is bounded by bytes, not only by counts (issue 12, item 13).

Within the default frame and rate limits a client could make every retained item a
megabyte; each collection the hub keeps has a byte budget (``HubLimits``), and what a budget
pushes out is counted and shown in ``memory()`` and ``/healthz``.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

import pytest

from when_coordinator.hub import Hub, HubLimits
from when_coordinator.hub.state import HubState
from when_coordinator.hub.testing import RawService, frame
from when_coordinator.protocol import Message, MessageType, ProtocolError, RegisterPayload

KB = 1024
MB = 1024 * KB


def msg(type: str, workflow_id: str = "", payload: dict[str, Any] | None = None) -> Message:
    return Message(type=MessageType(type), workflow_id=workflow_id, payload=payload or {})


def hub_state(**limits: int) -> HubState:
    state = HubState(limits=HubLimits(**limits))
    state.open_connection("c1", now=1.0, service_name="a")
    state.register("c1", RegisterPayload(service_name="a", service_id="svc-a"), now=1.0)
    return state


def log(text: str, workflow_id: str = "") -> Message:
    entry: dict[str, Any] = {"level": "info", "message": text}
    if workflow_id:
        entry["workflow_id"] = workflow_id
    return msg("log", payload=entry)


def test_the_hub_wide_log_buffer_is_bounded_by_bytes_and_counts_evictions() -> None:
    state = hub_state(log_buffer_bytes=1 * MB)
    for i in range(50):
        state.receive("c1", log(f"{i} " + "x" * 100 * KB), now=2.0)
    memory = state.memory()["logs"]
    assert memory["bytes"] <= 1 * MB
    assert memory["count"] == len(state.logs) < 11
    assert memory["evicted"] == 50 - len(state.logs)
    assert list(state.logs)[-1].message.startswith("49 ")


def test_workflow_log_buffers_are_bounded_each_and_together() -> None:
    state = hub_state(workflow_log_buffer_bytes=300 * KB, workflow_logs_bytes=1 * MB)
    for wf in ("quiet", "loud-1", "loud-2", "loud-3", "loud-4", "loud-5"):
        state.receive("c1", msg("progress", wf, {"workflow_id": wf, "percent": 1}), now=2.0)
    state.receive("c1", log("quiet one " + "q" * 100 * KB, "quiet"), now=2.0)
    for i in range(40):
        wf = f"loud-{i % 5 + 1}"
        state.receive("c1", log(f"{i} " + "x" * 100 * KB, wf), now=3.0)
        assert state.workflow_log_bytes <= 1 * MB
        assert all(buffer.bytes <= 300 * KB for buffer in state.workflow_logs.values())
    memory = state.memory()["workflow_logs"]
    assert memory["bytes"] == sum(b.bytes for b in state.workflow_logs.values())
    assert memory["evicted"] == 41 - memory["count"]
    # The workflow that logged least recently lost its records first.
    assert state.logs_for("quiet") == ()
    assert state.logs_for("loud-5")[-1].message.startswith("39 ")


def checkpoint(workflow_id: str, checkpoint_id: str, size: int) -> Message:
    payload = {
        "workflow_id": workflow_id,
        "checkpoint_id": checkpoint_id,
        "reason": "periodic",
        "state": {"blob": "s" * size},
    }
    return msg("checkpoint", workflow_id, payload)


def test_checkpoint_states_are_bounded_across_workflows_and_the_records_stay() -> None:
    state = hub_state(checkpoint_state_bytes=1 * MB)
    for i in range(30):
        wf = f"wf-{i % 10}"
        state.receive("c1", checkpoint(wf, f"cp-{i}", 200 * KB), now=2.0 + i)
        assert state.checkpoint_state_bytes <= 1 * MB
    memory = state.memory()["checkpoint_states"]
    assert memory["count"] == 5  # 1 MiB holds five states of 200 KiB
    assert memory["evicted"] == 25
    kept = [
        c.checkpoint_id
        for w in state.workflows.values()
        for c in w.checkpoints
        if c.state is not None
    ]
    assert sorted(kept) == ["cp-25", "cp-26", "cp-27", "cp-28", "cp-29"]  # the newest
    assert all(len(w.checkpoints) == 3 for w in state.workflows.values())  # records stay
    assert state.workflows["wf-0"].checkpoint_id == "cp-20"


def test_a_workflows_records_are_bounded_by_bytes_oldest_first() -> None:
    state = hub_state(workflow_bytes=1 * MB)
    phases = ["execution", "pausing", "paused", "resuming"]
    for i in range(200):
        reason = f"{i} " + "r" * 16 * KB
        change = {"workflow_id": "wf-1", "from": phases[i % 4], "to": phases[(i + 1) % 4]}
        state.receive("c1", msg("phase_changed", "wf-1", {**change, "reason": reason}), now=2)
        error = {"workflow_id": "wf-1", "error": f"e{i} " + "e" * 8 * KB, "recoverable": True}
        state.receive("c1", msg("error", "wf-1", error), now=2.0)
    workflow = state.workflows["wf-1"]
    kept = sum(len(c.reason) for c in workflow.history) + sum(len(e.error) for e in workflow.errors)
    assert kept <= 1 * MB
    assert workflow.history[-1].reason.startswith("199 ")
    assert workflow.errors[-1].error.startswith("e199 ")
    evicted = state.memory()["workflows"]["records_evicted"]
    assert evicted == 400 - len(workflow.history) - len(workflow.errors)


def test_all_workflows_together_are_bounded_finished_ones_forgotten_first() -> None:
    state = hub_state(workflows_bytes=2 * MB, workflow_bytes=512 * KB)
    done = {"workflow_id": "done", "from": "completing", "to": "completed"}
    state.receive("c1", msg("phase_changed", "done", done), now=2.0)
    for i in range(100):
        wf = f"wf-{i}"
        payload = {"workflow_id": wf, "percent": 5, "message": "m" * 16 * KB}
        state.receive("c1", msg("progress", wf, payload), now=3.0)
        for j in range(10):
            error = {"workflow_id": wf, "error": f"{j} " + "e" * 16 * KB, "recoverable": True}
            state.receive("c1", msg("error", wf, error), now=3.0)
        assert state.workflows_bytes <= 2 * MB
    memory = state.memory()["workflows"]
    assert "done" not in state.workflows  # the finished one went first
    assert len(state.workflows["wf-99"].errors) == 10
    assert memory["evicted"] == 101 - len(state.workflows)
    assert memory["bytes"] == state.workflows_bytes


def test_a_service_over_the_byte_bound_gives_up_its_own_workflows_before_anothers() -> None:
    """Only the service whose records outgrow the hub-wide bound loses workflows: its own
    oldest first, even when another service's are older, finished ones included."""
    state = hub_state(workflows_bytes=1 * MB, workflow_bytes=512 * KB)
    state.open_connection("c2", now=1.0, service_name="b")
    state.register("c2", RegisterPayload(service_name="b", service_id="svc-b"), now=1.0)
    done = {"workflow_id": "b-done", "from": "completing", "to": "completed"}
    state.receive("c2", msg("phase_changed", "b-done", done), now=2.0)
    for i in range(3):  # the other service's, older than all of the first's, running
        state.receive(
            "c2",
            msg("phase_changed", f"b-{i}", {"workflow_id": f"b-{i}", "to": "pending"}),
            now=2.0,
        )
    for i in range(80):
        wf = f"a-{i}"
        error = {"workflow_id": wf, "error": "e" * 16 * KB, "recoverable": True}
        state.receive("c1", msg("error", wf, error), now=3.0)
        assert state.workflows_bytes <= 1 * MB
    assert {"b-done", "b-0", "b-1", "b-2"} <= set(state.workflows)
    assert "a-0" not in state.workflows
    assert "a-79" in state.workflows


def test_long_texts_are_cut_and_counted_and_long_ids_refused() -> None:
    state = hub_state(max_text=1_000, max_id=100)
    payload = {"workflow_id": "wf-1", "percent": 5, "stage": "s" * 5_000, "message": "m" * 9}
    state.receive("c1", msg("progress", "wf-1", payload), now=2.0)
    workflow = state.workflows["wf-1"]
    assert len(workflow.stage) <= 1_000
    assert workflow.stage.endswith("[5000 chars]")
    assert workflow.message == "m" * 9
    assert state.memory()["workflows"]["texts_truncated"] == 1
    state.take_changes()
    long_id = "w" * 101
    with pytest.raises(ProtocolError, match="101 characters"):
        state.receive("c1", msg("progress", long_id, {"workflow_id": long_id, "percent": 1}), now=3)
    with pytest.raises(ProtocolError, match="checkpoint_id"):
        state.receive("c1", checkpoint("wf-1", "c" * 101, 10), now=3.0)
    created = {"workflow_id": "wf-2", "parent_workflow_id": long_id}
    with pytest.raises(ProtocolError, match="parent_workflow_id"):
        state.receive("c1", msg("workflow_created", "wf-2", created), now=3.0)
    assert set(state.workflows) == {"wf-1"}
    assert not state.take_changes()


async def test_the_received_frames_are_bounded_by_bytes_and_memory_is_in_healthz() -> None:
    limits = HubLimits(received_bytes=1 * MB)
    async with Hub(limits=limits, rate_limit=1e6, rate_burst=10**6) as hub:
        client = await RawService.connect(hub.url, service_name="big")
        await client.register("big", service_id="big-1")
        for i in range(20):
            payload = {"workflow_id": "wf-1", "percent": i, "message": "x" * 200 * KB}
            await client.send(frame("progress", "wf-1", payload))
        await hub.wait_for(lambda h: h.workflows["wf-1"].progress == 19)
        memory = hub.memory()["received"]
        assert memory["bytes"] <= 1 * MB
        assert memory["evicted"] == 21 - len(hub.received)
        assert hub.received[-1].message.payload["percent"] == 19

        def get() -> dict[str, Any]:
            with urllib.request.urlopen(f"{hub.http_url}/healthz", timeout=5) as response:
                return dict(json.loads(response.read()))

        body = await asyncio.to_thread(get)
        assert body["memory"]["received"]["evicted"] == memory["evicted"]
        assert set(body["memory"]) == {
            "logs",
            "workflow_logs",
            "workflows",
            "services",
            "checkpoint_states",
            "received",
            "sent",
        }
        assert body["store"] is None
        await client.close()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="log_buffer_bytes"):
        HubLimits(log_buffer_bytes=0)


def test_a_register_keeps_bounded_texts_and_services_are_bounded_by_count() -> None:
    state = HubState(max_services=3, limits=HubLimits(max_text=100, max_id=50))
    state.open_connection("c1", now=1.0)
    payload = RegisterPayload(
        service_name="n" * 1_000,
        service_id="svc-big",
        instance_id="i" * 1_000,
        version="v" * 1_000,
        capabilities=["c" * 1_000] * 500,
    )
    registration = state.register("c1", payload, now=1.0)
    service = state.services["svc-big"]
    assert max(len(service.service_name), len(service.instance_id), len(service.version)) <= 100
    assert len(registration.instance_id) <= 100
    assert len(service.capabilities) == 64
    assert all(len(c) <= 256 for c in service.capabilities)
    state.open_connection("c2", now=1.0)
    with pytest.raises(ProtocolError, match="service_id"):
        state.register("c2", RegisterPayload(service_name="x", service_id="s" * 51), now=1.0)
    for i in range(10):  # services come and go: the longest gone are forgotten
        state.open_connection(f"d{i}", now=2.0 + i)
        state.register(f"d{i}", RegisterPayload(service_name="x", service_id=f"d-{i}"), now=2 + i)
        state.close_connection(f"d{i}", now=2.5 + i)
    assert set(state.services) == {"svc-big", "d-8", "d-9"}  # connected ones stay
    assert state.memory()["services"] == {"count": 3, "limit": 3, "evicted": 8}


def test_mirrored_updates_keep_the_byte_counts_a_fresh_count_gives() -> None:
    """Another instance's documents (the PostgreSQL bus): progress-only updates keep the
    record lists' counts as they were, and still count the texts that changed."""
    checkpoint = {"checkpoint_id": "cp-1", "state": {"rows": "r" * KB}}
    rows: list[tuple[str, dict[str, Any]]] = [
        ("history", {"from": "", "to": "pre-flight", "at": 1.0}),
        ("checkpoints", checkpoint),
    ]
    document = {"workflow_id": "wf-1", "service_id": "svc-b", "phase": "execution"}
    live = HubState()
    live.mirror_workflow(document, rows)
    for i in range(50):
        live.mirror_workflow({**document, "message": "m" * i, "stage": f"s{i}"}, ())
    last = {**document, "message": "m" * 49, "stage": "s49"}
    fresh = HubState()
    fresh.mirror_workflow(last, rows)
    assert live.workflows["wf-1"].history == fresh.workflows["wf-1"].history
    assert live.workflows["wf-1"].message == "m" * 49
    assert live.workflows_bytes == fresh.workflows_bytes > 0
    assert live.checkpoint_state_bytes == fresh.checkpoint_state_bytes > KB
    assert live.memory() == fresh.memory()
