"""HubState without sockets: registration, phases, anomalies, health, bounds, persistence shape."""

from __future__ import annotations

from typing import Any

import pytest

from when_coordinator.hub.state import (
    Changes,
    Health,
    HubState,
    LogEvent,
    PhaseEvent,
    ServiceState,
    Snapshot,
    VersionRefused,
    WorkflowState,
    negotiate_version,
)
from when_coordinator.protocol import Message, MessageType, Phase, ProtocolError, RegisterPayload


def msg(type: str, workflow_id: str = "", payload: dict[str, Any] | None = None) -> Message:
    known = {t.value: t for t in MessageType}
    return Message(type=known.get(type, type), workflow_id=workflow_id, payload=payload or {})


def phase(workflow_id: str, source: str, target: str, reason: str = "", cp: str = "") -> Message:
    payload = {"workflow_id": workflow_id, "from": source, "to": target, "reason": reason}
    if cp:
        payload["checkpoint_id"] = cp
    return msg("phase_changed", workflow_id, payload)


def connected(state: HubState, conn: str = "c1", service_id: str = "svc-a") -> HubState:
    state.open_connection(conn, now=1.0, service_name="a", service_id=service_id)
    state.register(conn, RegisterPayload(service_name="a", service_id=service_id), now=1.0)
    return state


@pytest.mark.parametrize(
    ("client", "expected"),
    [("1.0", "1.0"), ("1.1", "1.1"), ("1.7", "1.1"), ("", "1.0"), ("1", "1.0")],
)
def test_version_negotiation_keeps_the_major_and_the_lower_minor(
    client: str, expected: str
) -> None:
    assert negotiate_version(client, "1.1") == expected


@pytest.mark.parametrize("client", ["2.0", "0.9", "one", "1.0.0"])
def test_version_negotiation_refuses_another_major_or_garbage(client: str) -> None:
    with pytest.raises(VersionRefused):
        negotiate_version(client, "1.1")


def test_register_keeps_the_service_id_or_falls_back_to_header_then_assigns() -> None:
    state = HubState()
    state.open_connection("c1", now=1.0, service_id="from-header")
    state.open_connection("c2", now=1.0)
    state.open_connection("c3", now=1.0, service_id="from-header-3")
    explicit = state.register("c3", RegisterPayload(service_name="x", service_id="own"), now=2)
    from_header = state.register("c1", RegisterPayload(service_name="x"), now=2.0)
    assigned = state.register("c2", RegisterPayload(service_name="x", instance_id="i"), now=2)
    assert (explicit.service_id, from_header.service_id) == ("own", "from-header")
    assert assigned.service_id == "svc-1"
    assert assigned.instance_id == "i"
    assert state.services["svc-1"].health is Health.HEALTHY
    assert state.services["own"].anomaly_count == 1  # header and payload disagree


def test_traffic_before_register_is_attributed_and_recorded_then_renamed() -> None:
    state = HubState()
    state.open_connection("c1", now=1.0)
    state.receive("c1", msg("progress", "wf-1", {"percent": 10}), now=2.0)
    provisional = state.connections["c1"].service_id
    assert provisional == "svc-1"
    assert state.services[provisional].anomalies == ("'progress' received before register",)
    state.register("c1", RegisterPayload(service_name="late", service_id="late-1"), now=3.0)
    assert provisional not in state.services
    assert state.workflows["wf-1"].service_id == "late-1"


def test_first_phase_change_of_an_unknown_workflow_creates_it_without_anomaly() -> None:
    state = connected(HubState())
    state.receive("c1", phase("wf-1", "paused", "resuming", "resume requested"), now=2.0)
    workflow = state.workflows["wf-1"]
    assert workflow.phase is Phase.RESUMING
    assert workflow.anomaly_count == 0  # a replay after a hub restart looks exactly like this
    assert workflow.service_id == "svc-a"
    assert [(c.from_phase, c.to_phase) for c in workflow.history] == [
        (Phase.PAUSED, Phase.RESUMING)
    ]


def test_duplicates_and_skipped_transitions_are_anomalies_not_history() -> None:
    state = connected(HubState())
    state.receive("c1", msg("workflow_created", "wf-1", {"workflow_id": "wf-1"}), now=2.0)
    for _ in range(3):
        state.receive("c1", phase("wf-1", "planning", "execution", "run"), now=3.0)
    workflow = state.workflows["wf-1"]
    assert workflow.phase is Phase.EXECUTION
    assert len(workflow.history) == 1
    assert workflow.anomaly_count == 3
    assert "transitions missing" in workflow.anomalies[0]
    assert workflow.anomalies[1:] == ("duplicate phase_changed planning -> execution",) * 2
    assert state.anomaly_count == 3


def test_a_transition_the_table_forbids_is_applied_and_recorded() -> None:
    state = connected(HubState())
    state.receive("c1", phase("wf-1", "", "pending"), now=1.0)
    state.receive("c1", phase("wf-1", "pending", "completed"), now=2.0)
    workflow = state.workflows["wf-1"]
    assert workflow.phase is Phase.COMPLETED
    assert workflow.is_terminal
    assert any("not allowed" in a for a in workflow.anomalies)


def test_workflow_tree_links_children_in_either_order() -> None:
    state = connected(HubState())
    created = {"workflow_id": "child", "parent_workflow_id": "parent"}
    state.receive("c1", msg("workflow_created", "child", created), now=1.0)
    state.receive("c1", msg("workflow_created", "parent", {"workflow_id": "parent"}), now=2)
    grandchild = {"workflow_id": "grand", "parent_workflow_id": "child"}
    state.receive("c1", msg("workflow_created", "grand", grandchild), now=3.0)
    assert state.workflows["parent"].children == ("child",)
    assert state.workflows["child"].children == ("grand",)
    assert state.workflows["child"].root_workflow_id == "parent"
    assert state.workflows["grand"].root_workflow_id == "parent"
    assert [w.workflow_id for w in state.children_of("parent")] == ["child"]


def test_a_late_parent_links_only_its_current_children() -> None:
    state = connected(HubState())
    for child, parent in (("a", "p"), ("b", "p"), ("c", "q"), ("b", "q")):  # b moves to q
        created = {"workflow_id": child, "parent_workflow_id": parent}
        state.receive("c1", msg("workflow_created", child, created), now=1.0)
    state.receive("c1", msg("workflow_created", "p", {"workflow_id": "p"}), now=2.0)
    state.receive("c1", msg("workflow_created", "q", {"workflow_id": "q"}), now=3.0)
    assert state.workflows["p"].children == ("a",)
    assert state.workflows["q"].children == ("c", "b")

    evicting = connected(HubState(max_workflows=2))
    created = {"workflow_id": "a", "parent_workflow_id": "p"}
    evicting.receive("c1", msg("workflow_created", "a", created), now=1.0)
    evicting.receive("c1", phase("a", "", "completed"), now=1.5)
    for other in ("x", "y"):  # the finished child is forgotten first
        evicting.receive("c1", msg("workflow_created", other, {"workflow_id": other}), now=2)
    assert "a" not in evicting.workflows
    evicting.receive("c1", msg("workflow_created", "p", {"workflow_id": "p"}), now=3.0)
    assert evicting.workflows["p"].children == ()

    restored = HubState()
    orphan = WorkflowState(workflow_id="d", parent_workflow_id="r", root_workflow_id="r")
    restored.restore(Snapshot(services=[], workflows=[orphan], logs=[]))
    connected(restored).receive("c1", msg("workflow_created", "r", {"workflow_id": "r"}), now=4)
    assert restored.workflows["r"].children == ("d",)


def test_status_response_updates_phase_progress_and_action_keeping_history_consistent() -> None:
    state = connected(HubState())
    state.receive("c1", phase("wf-1", "planning", "execution"), now=1.0)
    answer = {"workflow_id": "wf-1", "phase": "paused", "progress": 40, "current_action": "x"}
    state.receive("c1", msg("status_response", "wf-1", answer), now=2.0)
    workflow = state.workflows["wf-1"]
    assert (workflow.phase, workflow.progress, workflow.current_action) == (
        Phase.PAUSED,
        40.0,
        "x",
    )
    assert workflow.history[-1].to_phase is workflow.phase
    assert workflow.anomaly_count == 1


def test_bad_payload_raises_and_changes_nothing() -> None:
    state = connected(HubState())
    state.take_changes()
    with pytest.raises(ProtocolError, match="percent"):
        state.receive("c1", msg("progress", "wf-1", {"percent": "half"}), now=2.0)
    with pytest.raises(ProtocolError, match="without a workflow_id"):
        state.receive("c1", msg("progress", "", {"percent": 5}), now=2.0)
    assert "wf-1" not in state.workflows
    assert not state.take_changes()


def test_unknown_and_hub_to_service_types_are_ignored_and_counted() -> None:
    state = connected(HubState())
    state.receive("c1", msg("no_such_type", "wf-1"), now=2.0)
    state.receive("c1", msg("pause", "wf-1", {"workflow_id": "wf-1"}), now=2.0)
    assert state.connections["c1"].ignored == 2
    assert not state.workflows


def test_progress_out_of_range_is_clamped_and_recorded() -> None:
    state = connected(HubState())
    state.receive("c1", msg("progress", "wf-1", {"percent": 150}), now=2.0)
    assert state.workflows["wf-1"].progress == 100.0
    assert state.workflows["wf-1"].anomaly_count == 1


def test_ping_pong_health_and_stray_pongs() -> None:
    state = connected(HubState())
    seen = []
    state.ping_sent("c1", "p1", now=10.0)
    state.check_health(now=10.5, pong_timeout=1.0)
    seen.append(state.services["svc-a"].health)
    state.check_health(now=11.5, pong_timeout=1.0)
    seen.append(state.services["svc-a"].health)
    state.receive("c1", Message(type=MessageType.PONG, id="p1"), now=11.6)
    service = state.services["svc-a"]
    seen.append(service.health)
    assert seen == [Health.HEALTHY, Health.LATE, Health.HEALTHY]
    assert service.rtt == pytest.approx(1.6)
    assert service.pending_pings == ()
    state.receive("c1", Message(type=MessageType.PONG, id="nobody-asked"), now=12.0)
    assert service.anomaly_count == 1
    state.close_connection("c1", now=13.0, code=1000, reason="bye")
    assert service.health is Health.DISCONNECTED
    assert (service.close_code, service.close_reason) == (1000, "bye")


def test_a_newer_connection_takes_over_a_service_and_the_old_close_does_not_disconnect() -> None:
    state = connected(HubState(), "c1")
    connected(state, "c2")
    assert state.services["svc-a"].connection_id == "c2"
    assert state.services["svc-a"].anomaly_count == 1
    state.close_connection("c1", now=5.0, code=1006)
    assert state.services["svc-a"].connected
    assert state.services["svc-a"].connections == 2


def test_log_buffers_are_bounded_and_count_evictions() -> None:
    state = connected(HubState(log_buffer=3, workflow_log_buffer=2))
    state.receive("c1", phase("wf-1", "", "pending"), now=1.0)
    entries = [
        {"timestamp": "", "level": "info", "message": f"m{i}", "workflow_id": "wf-1"}
        for i in range(5)
    ]
    state.receive("c1", msg("log_batch", payload={"logs": entries}), now=2.0)
    assert [r.message for r in state.logs] == ["m2", "m3", "m4"]
    assert state.logs.evicted == 2
    assert [r.message for r in state.logs_for("wf-1")] == ["m3", "m4"]
    assert state.workflow_logs["wf-1"].evicted == 3
    assert state.workflows["wf-1"].log_count == 5


def test_finished_workflows_are_evicted_first_beyond_max_workflows() -> None:
    state = connected(HubState(max_workflows=2))
    state.receive("c1", phase("done", "completing", "completed"), now=1.0)
    state.receive("c1", phase("live", "", "pending"), now=2.0)
    state.take_changes()
    state.receive("c1", phase("new", "", "pending"), now=3.0)
    assert set(state.workflows) == {"live", "new"}
    assert state.workflows_evicted == 1
    assert state.take_changes().removed_workflows == {"done"}


def two_services(max_workflows: int) -> HubState:
    state = connected(HubState(max_workflows=max_workflows))
    return connected(state, "c2", "svc-b")


def finish(state: HubState, conn: str, *workflow_ids: str) -> None:
    for workflow_id in workflow_ids:
        state.receive(conn, phase(workflow_id, "completing", "completed"), now=1.0)


def test_a_full_hub_evicts_the_newcomers_own_oldest_finished_workflow_first() -> None:
    state = two_services(4)
    finish(state, "c1", "a1", "a2")
    finish(state, "c2", "b1", "b2")
    state.receive("c2", phase("b3", "", "pending"), now=2.0)
    assert set(state.workflows) == {"a1", "a2", "b2", "b3"}  # not a1, the oldest of all
    state.receive("c1", phase("a3", "", "pending"), now=3.0)
    assert set(state.workflows) == {"a2", "b2", "b3", "a3"}


def test_a_reopened_workflow_is_not_evicted_as_a_finished_one() -> None:
    """Finished, then reused for a new run: live again, so the full hub takes another
    service's finished workflow before the newcomer's service's live one."""
    state = two_services(3)
    finish(state, "c1", "a1")
    finish(state, "c2", "b1")
    state.receive("c2", phase("b1", "", "pending"), now=2.0)
    state.receive("c2", phase("b2", "", "pending"), now=3.0)
    state.receive("c2", phase("b3", "", "pending"), now=4.0)
    assert set(state.workflows) == {"b1", "b2", "b3"}
    assert state.workflows["b1"].phase is Phase.PENDING


def test_finished_workflows_keep_their_service_when_it_registers_under_another_id() -> None:
    state = connected(HubState(max_workflows=3))
    finish(state, "c1", "a1")
    state.open_connection("c2", now=1.0)
    finish(state, "c2", "late-done")  # before register: a provisional id
    state.register("c2", RegisterPayload(service_name="late", service_id="late-1"), now=2.0)
    state.receive("c2", phase("late-live", "", "pending"), now=3.0)
    state.receive("c2", phase("late-new", "", "pending"), now=4.0)
    assert set(state.workflows) == {"a1", "late-live", "late-new"}
    assert state.workflows["late-live"].service_id == "late-1"


def test_changes_report_ids_and_discrete_events_in_order() -> None:
    state = connected(HubState())
    state.take_changes()
    state.receive("c1", phase("wf-1", "", "pending"), now=1.0)
    log = {"level": "info", "message": "hi", "timestamp": ""}
    state.receive("c1", msg("log", payload=log), now=1.0)
    changes = state.take_changes()
    assert changes.workflows == {"wf-1"}
    assert [type(e) for e in changes.events] == [PhaseEvent, LogEvent]
    assert state.take_changes() == Changes()


def test_records_survive_a_round_trip_through_their_dicts() -> None:
    state = connected(HubState())
    state.receive("c1", phase("wf-1", "planning", "execution", "run", cp="cp-1"), now=1.0)
    error = {"workflow_id": "wf-1", "error": "boom", "recoverable": True}
    state.receive("c1", msg("error", "wf-1", error), now=2.0)
    workflow = state.workflows["wf-1"]
    again = WorkflowState.from_dict(workflow.as_dict())
    again.connection_id = workflow.connection_id
    assert again == workflow
    service = ServiceState.from_dict(state.services["svc-a"].as_dict())
    assert service.service_name == "a"
    assert not service.connected

    restored = HubState()
    restored.restore(Snapshot(services=[service], workflows=[again]))
    assert restored.workflows["wf-1"].checkpoint_id == "cp-1"
    assert restored.services["svc-a"].health is Health.DISCONNECTED
