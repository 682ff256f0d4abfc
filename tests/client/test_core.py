"""The sans-I/O client core alone: events in, frames out, no sockets, threads or clocks.

Every test drives ``ClientCore`` by calling it as the session would (a connection opened, frames
taken and written, an acknowledgement, a frame from the hub, the connection lost) and reads
what it returns: the frames are decoded with the protocol module, as the hub would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from when_coordinator import Config, Phase, PhaseManager
from when_coordinator.client.core import ACK_EVERY, BATCH_MESSAGES, ClientCore
from when_coordinator.client.encoding import phase_changed_payload
from when_coordinator.client.outbox import Entry
from when_coordinator.phase_manager import PhaseState
from when_coordinator.protocol import (
    LogEntry,
    Message,
    MessageType,
    PausePayload,
    ProgressPayload,
    RegisteredPayload,
    WorkflowCreatedPayload,
    decode,
    encode,
)

NOW = 1_700_000_000_000_000_000
"""The time every event happens at: the core takes it as an argument and reads no clock."""


def make_core(**changes: Any) -> ClientCore:
    config = Config(when_url="ws://127.0.0.1:1/v1/coordination", service_name="core-test")
    return ClientCore(config.with_changes(**changes) if changes else config, PhaseManager())


def created(core: ClientCore, workflow_id: str) -> bool:
    payload = WorkflowCreatedPayload(workflow_id, action_type="etl")
    return core.enqueue(Entry(MessageType.WORKFLOW_CREATED, workflow_id, payload, 200, NOW))


def progress(core: ClientCore, workflow_id: str, percent: float, stage: str = "") -> bool:
    payload = ProgressPayload(workflow_id, percent, stage=stage)
    return core.enqueue(Entry(MessageType.PROGRESS, workflow_id, payload, 200, NOW))


def log(core: ClientCore, text: str) -> bool:
    entry = LogEntry(message=text)
    return core.enqueue(Entry(MessageType.LOG, "", entry, 160 + len(text), NOW))


def transition(core: ClientCore, state: PhaseState) -> bool:
    """What the coordinator queues for a transition (it listens to the phase manager)."""
    payload = phase_changed_payload(state)
    entry = Entry(MessageType.PHASE_CHANGED, state.workflow_id, payload, 200, NOW, state.sequence)
    return core.enqueue(entry)


def hub_frame(message_type: str, payload: dict[str, Any] | None = None, **envelope: str) -> str:
    frame: dict[str, Any] = {"type": message_type, "id": "hub-1", **envelope}
    if payload is not None:
        frame["payload"] = payload
    return json.dumps(frame)


def kinds(frames: list[str]) -> list[str]:
    return [str(decode(frame).type) for frame in frames]


def test_a_connection_starts_with_register_and_sends_in_queue_order() -> None:
    core = make_core()
    assert created(core, "wf-1")
    assert progress(core, "wf-1", 10.0)
    first = decode(core.connection_opened())
    assert first.type == MessageType.REGISTER
    assert first.payload["service_name"] == "core-test"
    frames = core.frames_to_send()
    assert kinds(frames) == ["workflow_created", "progress"]
    assert decode(frames[0]).workflow_id == "wf-1"  # workflow_created names it on the envelope
    assert core.frames_to_send() == []


def test_an_acknowledgement_delivers_what_was_in_flight_when_it_was_asked() -> None:
    core = make_core()
    connection = core.connection_opened()
    assert connection
    for n in range(3):
        created(core, f"wf-{n}")
    assert len(core.frames_to_send()) == 3
    assert core.ack_due(idle=False) is None  # under load: only every ACK_EVERY messages
    asked = core.ack_due(idle=True)
    assert asked == 3
    assert core.ack_due(idle=True) is None  # one at a time
    created(core, "wf-late")  # sent after the ping: not covered by its pong
    assert len(core.frames_to_send()) == 1
    core.acknowledged(core.connection, asked)
    counters = core.outbox.counters()
    assert (counters.delivered, counters.inflight) == (3, 1)
    assert core.ack_due(idle=True) == 1
    core.acknowledged(core.connection, None)  # the ping failed: nothing confirmed
    assert core.outbox.counters().delivered == 3
    assert core.pending


def test_under_load_an_acknowledgement_is_asked_every_ack_every_messages() -> None:
    core = make_core()
    core.connection_opened()
    for n in range(ACK_EVERY):
        log(core, f"line {n}")
    sent = 0
    while frames := core.frames_to_send():
        assert len(frames) <= BATCH_MESSAGES
        sent += len(frames)
    assert sent == ACK_EVERY
    assert core.ack_due(idle=False) == ACK_EVERY


def test_what_was_not_acknowledged_is_sent_again_identically_after_a_reconnect() -> None:
    core = make_core()
    core.connection_opened()
    created(core, "wf-1")
    progress(core, "wf-1", 50.0)
    before = core.frames_to_send()
    asked = core.ack_due(idle=True)
    old_connection = core.connection
    assert core.connection_lost() == 2
    core.acknowledged(old_connection, asked)  # a pong of the lost connection confirms nothing
    assert core.outbox.counters().delivered == 0
    core.connection_opened()
    assert core.frames_to_send() == before  # same frames, same ids: the hub can deduplicate
    core.acknowledged(old_connection, 2)  # still nothing: another connection now
    assert core.outbox.counters().delivered == 0


def test_registered_replays_live_workflows_once_per_connection_but_not_queued_ones() -> None:
    core = make_core()
    phases = core.phases
    for workflow_id in ("sent", "queued"):
        phases.register_workflow(workflow_id)
    transition(core, phases.transition_to("sent", Phase.PRE_FLIGHT))
    core.connection_opened()
    core.frames_to_send()
    core.acknowledged(core.connection, core.ack_due(idle=True))  # "sent" is at the hub
    transition(core, phases.transition_to("queued", Phase.PRE_FLIGHT))  # still on its way
    registered = hub_frame("registered", {"service_id": "svc-9", "hub_protocol_version": "3"})
    message = core.receive(registered)
    assert message is not None
    payload = core.handle_registered(message, NOW)
    assert isinstance(payload, RegisteredPayload)
    assert core.service_id == "svc-9"
    frames = [decode(frame) for frame in core.frames_to_send()]
    # "sent" is re-asserted first (a hub that restarted lost it), then the queue goes on;
    # "queued" is not replayed: its transition is in the outbox and must not arrive twice.
    assert [(m.type, m.payload["workflow_id"]) for m in frames] == [
        (MessageType.PHASE_CHANGED, "sent"),
        (MessageType.PHASE_CHANGED, "queued"),
    ]
    assert frames[0].timestamp.startswith("2023-11-14T22:13:20")  # the time it was given
    core.handle_registered(message, NOW)  # repeated on the same connection: no new replay
    assert core.frames_to_send() == []
    core.connection_lost()
    core.connection_opened()
    assert kinds(core.frames_to_send()) == ["phase_changed"]  # "queued", requeued and resent
    core.handle_registered(message, NOW)  # a new connection: replayed again, "queued" not
    (again,) = core.frames_to_send()  # (it is in flight, unacknowledged)
    assert decode(again).payload["workflow_id"] == "sent"


def test_a_1009_from_the_hub_lowers_the_frame_limit_below_the_longest_frame_in_flight() -> None:
    core = make_core(max_frame_bytes=4096)
    core.connection_opened()
    assert log(core, "x" * 3000)
    assert log(core, "short")
    frames = core.frames_to_send()
    longest = max(len(frame) for frame in frames)
    core.connection_lost(refused_frame=True)
    assert core.frame_limit == longest - 1
    core.connection_opened()
    again = core.frames_to_send()
    assert [decode(frame).payload["message"] for frame in again] == ["short"]
    assert core.outbox.counters().drop_reasons == {"larger than max_frame_bytes": 1}
    # A message over the learned limit is refused at once, before it can displace anything.
    assert not log(core, "y" * 3100)
    # A close that is not the hub's refusal teaches nothing.
    core.connection_lost(refused_frame=False)
    assert core.frame_limit == longest - 1


def test_queued_progress_of_a_workflow_merges_into_the_newest_keeping_its_stage() -> None:
    core = make_core()
    created(core, "wf-1")
    progress(core, "wf-1", 10.0, stage="extract")
    progress(core, "wf-1", 20.0)
    progress(core, "wf-1", 30.0)
    progress(core, "wf-2", 5.0)
    core.connection_opened()
    frames = [decode(frame) for frame in core.frames_to_send()]
    assert [(m.payload.get("workflow_id"), m.payload.get("percent")) for m in frames] == [
        ("wf-1", None),
        ("wf-1", 30.0),
        ("wf-2", 5.0),
    ]
    assert frames[1].payload["stage"] == "extract"
    assert core.outbox.counters().coalesced == 2


def test_bounds_shed_logs_before_state_and_keep_half_the_outbox_out_of_flight() -> None:
    core = make_core(outbox_max_messages=8)
    for n in range(6):
        log(core, f"line {n}")
    for n in range(4):
        created(core, f"wf-{n}")
    counters = core.outbox.counters()
    assert counters.queued == 8
    assert counters.dropped == {"log": 2}  # the two oldest logs made room for workflow state
    core.connection_opened()
    assert len(core.frames_to_send()) == 4  # in flight: at most half of the bound
    assert core.frames_to_send() == []  # until the hub acknowledges
    core.acknowledged(core.connection, core.ack_due(idle=True))
    assert len(core.frames_to_send()) == 4
    counters = core.outbox.counters()
    assert counters.accepted == counters.delivered + sum(counters.dropped.values()) + 4


def test_replies_go_before_the_outbox_and_bad_frames_are_counted_not_raised() -> None:
    core = make_core(max_frame_bytes=1024)
    core.connection_opened()
    created(core, "wf-1")
    for frame in (b"binary", "x" * 2000, "{not json", hub_frame("ping")):
        message = core.receive(frame)
        if message is not None:
            core.handle_ping(message)
    assert core.received == 4
    assert dict(core.inbound_dropped) == {
        "binary frame": 1,
        "oversized frame": 1,
        "invalid frame": 1,
    }
    frames = [decode(frame) for frame in core.frames_to_send()]
    assert next((m.type, m.id) for m in frames) == (MessageType.PONG, "hub-1")
    assert frames[1].type == MessageType.WORKFLOW_CREATED


def test_commands_apply_to_the_phase_manager_or_are_refused_with_the_reason() -> None:
    core = make_core()
    core.phases.register_workflow("wf-1")
    for phase in (Phase.PRE_FLIGHT, Phase.PLANNING, Phase.EXECUTION):
        core.phases.transition_to("wf-1", phase)
    pause = Message.create(PausePayload(workflow_id="wf-1", reason="maintenance"))
    event = core.handle_command(decode(encode(pause)))
    assert event.accepted
    assert event.state is not None
    assert event.state.phase is Phase.PAUSING
    assert event.reason == "maintenance"
    unknown = Message.create(PausePayload(workflow_id="nope"))
    refused = core.handle_command(unknown)
    assert not refused.accepted
    assert refused.error


def test_a_status_request_is_answered_from_the_phase_manager() -> None:
    core = make_core()
    core.phases.register_workflow("wf-1")
    core.connection_opened()
    for workflow_id in ("wf-1", "unknown"):
        message = core.receive(hub_frame("status", {"workflow_id": workflow_id}))
        assert message is not None
        core.handle_status(message)
    (frame,) = core.frames_to_send()  # the unknown workflow is not answered
    answer = decode(frame)
    assert answer.type == MessageType.STATUS_RESPONSE
    assert answer.payload["phase"] == "pending"


def test_after_a_fork_the_inherited_workflows_are_not_reported_from_the_child() -> None:
    core = make_core()
    core.phases.register_workflow("parent-wf")
    core.forked()
    assert not created(core, "parent-wf")
    assert core.outbox.counters().drop_reasons == {"not sending: the parent process's workflow": 1}
    core.phases.remove_workflow("parent-wf")
    core.workflow_registered(core.phases.register_workflow("parent-wf"))  # started anew here
    assert created(core, "parent-wf")


@pytest.mark.parametrize("limit", [1, 3])
def test_an_outbox_of_any_bound_keeps_one_message_in_flight(limit: int) -> None:
    core = make_core(outbox_max_messages=limit)
    core.connection_opened()
    for n in range(5):
        created(core, f"wf-{n}")
    assert len(core.frames_to_send()) == max(1, limit // 2)
