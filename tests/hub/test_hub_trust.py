"""Who may change a workflow at the hub, and what a status reply may change (issue 12: 12, 18)."""

from __future__ import annotations

import asyncio
from typing import Any

from when_coordinator.hub import Hub
from when_coordinator.hub.state import HubState
from when_coordinator.hub.testing import RawService, frame
from when_coordinator.protocol import Message, MessageType, Phase, RegisterPayload


def msg(type: str, workflow_id: str, payload: dict[str, Any]) -> Message:
    return Message(type=MessageType(type), workflow_id=workflow_id, payload=payload)


def two_services() -> HubState:
    state = HubState()
    for conn, service_id in (("ca", "svc-a"), ("cb", "svc-b")):
        state.open_connection(conn, now=1.0, service_name=service_id)
        state.register(conn, RegisterPayload(service_name=service_id, service_id=service_id), now=1)
    return state


def test_another_services_message_about_a_workflow_is_refused_and_recorded() -> None:
    state = two_services()
    created = {"workflow_id": "wf-a", "action_type": "etl"}
    assert state.receive("ca", msg("workflow_created", "wf-a", created), now=2.0)
    change = {"workflow_id": "wf-a", "from": "", "to": "execution"}
    assert state.receive("ca", msg("phase_changed", "wf-a", change), now=2.0)
    before = state.workflows["wf-a"].copy()
    state.take_changes()
    attacks = [
        msg("progress", "wf-a", {"workflow_id": "wf-a", "percent": 99}),
        msg("phase_changed", "wf-a", {"workflow_id": "wf-a", "from": "execution", "to": "failed"}),
        msg("checkpoint", "wf-a", {"workflow_id": "wf-a", "checkpoint_id": "x", "reason": "r"}),
        msg("error", "wf-a", {"workflow_id": "wf-a", "error": "boom", "recoverable": False}),
        msg("workflow_created", "wf-a", {"workflow_id": "wf-a"}),
        msg("status_response", "wf-a", {"workflow_id": "wf-a", "phase": "failed", "progress": 1}),
    ]
    for attack in attacks:
        assert not state.receive("cb", attack, now=3.0)
    after = state.workflows["wf-a"]
    assert after == before  # nothing moved: owner, connection, phase, progress, records
    assert (after.service_id, after.connection_id) == ("svc-a", "ca")
    refused = [a for a in state.anomalies if "refused" in a.text]
    assert len(refused) == len(attacks)
    assert {(a.service_id, a.workflow_id) for a in refused} == {("svc-b", "wf-a")}
    assert state.services["svc-b"].anomaly_count == len(attacks)
    assert state.workflows["wf-a"].anomaly_count == 0  # the victim's record is not spammed
    assert "wf-a" not in state.take_changes().workflows


def test_ownership_moves_only_with_the_same_service_id_on_a_new_connection() -> None:
    state = two_services()
    state.receive("ca", msg("progress", "wf-a", {"workflow_id": "wf-a", "percent": 10}), now=2)
    state.close_connection("ca", now=3.0)
    # While svc-a is away, svc-b still may not take the workflow.
    assert not state.receive(
        "cb", msg("progress", "wf-a", {"workflow_id": "wf-a", "percent": 50}), now=4
    )
    state.open_connection("ca2", now=5.0, service_name="svc-a")
    state.register("ca2", RegisterPayload(service_name="svc-a", service_id="svc-a"), now=5.0)
    assert state.receive(
        "ca2", msg("progress", "wf-a", {"workflow_id": "wf-a", "percent": 20}), now=6
    )
    workflow = state.workflows["wf-a"]
    assert (workflow.service_id, workflow.connection_id, workflow.progress) == ("svc-a", "ca2", 20)


def test_a_restarted_service_that_gets_its_id_back_owns_its_workflows_again() -> None:
    """Identity on re-register (same name and instance, no id given) and ownership agree: the
    restarted process is the same service id, so its workflows are its own; a live replica
    with the same name is another id and may not touch them. Names over the text bound are
    compared as kept (cut)."""
    state = HubState()
    long_name = "billing-" + "x" * (state.limits.max_text + 50)

    def progress(conn: str, wid: str, percent: int) -> bool:
        change = msg("progress", wid, {"workflow_id": wid, "percent": percent})
        return state.receive(conn, change, now=6.0)

    for name in ("billing", long_name):
        wid = f"wf-{len(name)}"
        first_c, again_c, twin_c = (f"{c}-{len(name)}" for c in ("c1", "c2", "c3"))
        registered: list[str] = []
        for conn in (first_c, again_c, twin_c):
            state.open_connection(conn, now=1.0)
            payload = RegisterPayload(service_name=name, instance_id="b-1")
            registered.append(state.register(conn, payload, now=1.0).service_id)
            if conn == first_c:
                assert progress(first_c, wid, 10)
                state.close_connection(first_c, now=3.0)
        first, again, twin = registered
        assert again == first  # a restart keeps its identity...
        assert twin != first  # ...a replica beside it does not
        assert not progress(twin_c, wid, 90)
        assert progress(again_c, wid, 20)
        workflow = state.workflows[wid]
        assert (workflow.service_id, workflow.connection_id, workflow.progress) == (
            first,
            again_c,
            20,
        )


async def test_a_service_cannot_take_over_another_services_workflow_at_a_running_hub() -> None:
    async with Hub() as hub:
        owner = await RawService.connect(hub.url, service_name="owner")
        await owner.register("owner", service_id="owner-1")
        intruder = await RawService.connect(hub.url, service_name="intruder")
        await intruder.register("intruder", service_id="intruder-1")
        await owner.send(frame("workflow_created", "wf-1", {"workflow_id": "wf-1"}))
        go = {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
        await owner.send(frame("phase_changed", "wf-1", go))
        await hub.wait_for(lambda h: h.workflows["wf-1"].phase is Phase.EXECUTION)
        await intruder.send(frame("progress", "wf-1", {"workflow_id": "wf-1", "percent": 5}))
        stop = {"workflow_id": "wf-1", "from": "execution", "to": "paused"}
        await intruder.send(frame("phase_changed", "wf-1", stop))
        await hub.wait_for(lambda h: h.services["intruder-1"].anomaly_count == 2)
        workflow = hub.workflows["wf-1"]
        assert (workflow.service_id, workflow.phase, workflow.progress) == (
            "owner-1",
            Phase.EXECUTION,
            0.0,
        )
        # The owner, not the intruder, receives the workflow's commands.
        await hub.pause("wf-1", "checked")
        assert (await owner.expect("pause"))["payload"]["workflow_id"] == "wf-1"
        await intruder.send(frame("progress", "wf-2", {"workflow_id": "wf-2", "percent": 1}))
        await hub.wait_for(lambda h: "wf-2" in h.workflows)
        assert not [m for m in intruder.received if m.get("type") == "pause"]
        await intruder.close()
        await owner.close()


# ---------------------------------------------------------------------- progress (item 18)


def test_a_status_response_does_not_move_progress_backwards() -> None:
    state = two_services()
    state.receive("ca", msg("progress", "wf-a", {"workflow_id": "wf-a", "percent": 30}), now=2)
    # The Go client answers status with progress 0: only SetProgress feeds that field.
    answer = {"workflow_id": "wf-a", "phase": "pending", "progress": 0, "current_action": "copy"}
    state.receive("ca", msg("status_response", "wf-a", answer), now=3.0)
    workflow = state.workflows["wf-a"]
    assert (workflow.progress, workflow.current_action) == (30.0, "copy")
    assert workflow.anomalies[-1] == (
        "status_response reports progress 0 but the workflow reported 30: kept 30"
    )
    answer["progress"] = 45
    state.receive("ca", msg("status_response", "wf-a", answer), now=4.0)
    assert state.workflows["wf-a"].progress == 45.0  # forwards is fine
    assert state.workflows["wf-a"].anomaly_count == 1


def complete(state: HubState, workflow_id: str) -> None:
    for source, target in (("execution", "completing"), ("completing", "completed")):
        change = {"workflow_id": workflow_id, "from": source, "to": target}
        state.receive("ca", msg("phase_changed", workflow_id, change), now=3.0)


def test_a_completed_workflow_shows_100_percent_unless_it_reports_otherwise() -> None:
    state = two_services()
    complete(state, "silent")  # never reported progress: done is 100%
    assert state.workflows["silent"].progress == 100.0
    answer = {"workflow_id": "silent", "phase": "completed", "progress": 0}
    state.receive("ca", msg("status_response", "silent", answer), now=4.0)
    assert state.workflows["silent"].progress == 100.0  # the Go client's 0 does not undo it
    for workflow_id, percent in (("thirty", 30), ("zero", 0)):  # they reported otherwise
        payload = {"workflow_id": workflow_id, "percent": percent}
        state.receive("ca", msg("progress", workflow_id, payload), now=2.0)
        complete(state, workflow_id)
        assert state.workflows[workflow_id].progress == percent
    # Reaching completed through a status reply counts as completing too.
    answer = {"workflow_id": "via-status", "phase": "completed", "progress": 0}
    state.receive("ca", msg("status_response", "via-status", answer), now=7.0)
    assert state.workflows["via-status"].progress == 100.0


async def test_a_status_answer_from_another_service_is_not_taken_as_the_answer() -> None:
    async with Hub() as hub:
        owner = await RawService.connect(hub.url, service_name="owner")
        await owner.register("owner", service_id="owner-1")
        intruder = await RawService.connect(hub.url, service_name="intruder")
        await intruder.register("intruder", service_id="intruder-1")
        progress = {"workflow_id": "wf-1", "percent": 30}
        await owner.send(frame("progress", "wf-1", progress))
        await hub.wait_for(lambda h: "wf-1" in h.workflows)
        asking = asyncio.ensure_future(hub.status("wf-1", timeout=5))
        request = await owner.expect("status")
        forged = {"workflow_id": "wf-1", "phase": "failed", "progress": 0}
        await intruder.send(frame("status_response", "wf-1", forged, id=request["id"]))
        await hub.wait_for(lambda h: h.services["intruder-1"].anomaly_count == 1)
        assert not asking.done()
        answer = {"workflow_id": "wf-1", "phase": "execution", "progress": 30}
        await owner.send(frame("status_response", "wf-1", answer, id=request["id"]))
        assert (await asking).phase is Phase.EXECUTION
        assert hub.workflows["wf-1"].phase is Phase.EXECUTION
        await intruder.close()
        await owner.close()
