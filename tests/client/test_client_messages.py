"""What the client does with what the hub sends (``registered``, ``ping``, ``status``,
``pause``/``resume``/``cancel``, unknown and bad frames), and the one-``phase_changed``-per-
transition guarantee. Real sockets on loopback throughout."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.scripted_server import Frame, ScriptedServer, fast_config, wait_until
from when_coordinator import CommandEvent, Coordinator, Message, Phase, PhaseManager


@pytest.fixture
def client(server: ScriptedServer) -> Iterator[Coordinator]:
    """The layer's ``client`` with a 1000-byte frame limit, to reach it with small messages."""
    coordinator = Coordinator(fast_config(server.url, max_frame_bytes=1000))
    coordinator.connect()
    assert coordinator.wait_registered(5)
    yield coordinator
    coordinator.close(2.0)


class Commands:
    """Collects ``on_command`` events for a test to wait on."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.events: queue.Queue[CommandEvent] = queue.Queue()
        coordinator.on_command(self.events.put)

    def next(self, timeout: float = 5.0) -> CommandEvent:
        return self.events.get(timeout=timeout)


def to_execution(phases: PhaseManager, wf: str) -> None:
    phases.register_workflow(wf)
    phases.transition_to(wf, "pre-flight", "checks")
    phases.transition_to(wf, "planning", "plan")
    phases.transition_to(wf, "execution", "run")


def phase_frames(frames: list[Frame], wf: str | None = None) -> list[dict[str, Any]]:
    return [
        dict(f.payload)
        for f in frames
        if f.type == "phase_changed" and (wf is None or f.payload["workflow_id"] == wf)
    ]


def replies(server: ScriptedServer, message_type: str, message_id: str) -> list[Frame]:
    return [f for f in server.of_type(message_type) if f.message and f.message.id == message_id]


# ---------------------------------------------------------------------- registered and replays


def test_each_connection_replays_each_non_terminal_workflow_once() -> None:
    # A hub repeating ``registered`` (18,600 frames made 1.58 M phase_changed with 100
    # workflows) gets one replay per connection; a new connection gets its own.
    with ScriptedServer(auto_register=False) as server:
        coordinator = Coordinator(fast_config(server.url))
        coordinator.connect()
        server.wait_count("register", 1)
        phases = coordinator.phases
        phases.register_workflow("wf-pending")
        to_execution(phases, "wf-exec")
        to_execution(phases, "wf-paused")
        phases.pause("wf-paused", "operator asked")
        phases.complete_pause("wf-paused", "cp-1")
        to_execution(phases, "wf-done")
        phases.complete("wf-done")
        to_execution(phases, "wf-failed")
        phases.fail("wf-failed", "boom")
        assert coordinator.flush(5)
        server.barrier()
        assert not coordinator.is_registered
        live = len(phase_frames(server.snapshot()))

        expected = {
            "wf-pending": {"workflow_id": "wf-pending", "from": "", "to": "pending"},
            "wf-exec": {
                "workflow_id": "wf-exec",
                "from": "planning",
                "to": "execution",
                "reason": "run",
            },
            "wf-paused": {
                "workflow_id": "wf-paused",
                "from": "pausing",
                "to": "paused",
                "reason": "operator asked",
                "checkpoint_id": "cp-1",
            },
        }
        registered = threading.Event()
        coordinator.on_registered(lambda _payload: registered.set())
        for connection in (1, 2):
            if connection == 2:
                server.close_connection()
                server.wait_count("register", 2)
                registered.clear()
            for round_ in range(1, 201):
                server.send(
                    {
                        "id": f"reg-{connection}-{round_}",
                        "type": "registered",
                        "payload": {
                            "service_id": f"svc-{connection}-{round_}",
                            "hub_protocol_version": "1.0",
                        },
                    }
                )
            server.barrier()
            replayed = phase_frames(server.snapshot())[live:]
            assert len(replayed) == 3, replayed
            assert {p["workflow_id"]: p for p in replayed} == expected
            assert {f.connection for f in server.of_type("phase_changed")[-3:]} == {connection}
            live += 3
            assert registered.is_set()
            assert coordinator.is_registered
            # Every ``registered`` still updates what the hub said.
            assert coordinator.service_id == f"svc-{connection}-200"
            assert coordinator.hub_protocol_version == "1.0"
        stats = coordinator.stats()
        assert stats.sent == stats.delivered  # replays bypass the outbox
        coordinator.close()


def test_no_replay_for_a_transition_still_queued() -> None:
    # ``registered`` goes out as the connection opens, so it reaches the client while what it
    # had queued is still on its way.
    with ScriptedServer(register_on_open=True) as server:
        coordinator = Coordinator(fast_config(server.url))
        phases = coordinator.phases
        to_execution(phases, "wf-queued")
        phases.register_workflow("wf-quiet")  # pending: nothing queued for it
        to_execution(phases, "wf-ended")
        phases.complete("wf-ended")
        coordinator.connect()
        assert coordinator.wait_registered(5)
        assert coordinator.flush(5)
        server.barrier()
        frames = server.snapshot()
        assert [p["to"] for p in phase_frames(frames, "wf-queued")] == [
            "pre-flight",
            "planning",
            "execution",
        ]
        assert phase_frames(frames, "wf-quiet") == [
            {"workflow_id": "wf-quiet", "from": "", "to": "pending"}
        ]
        assert len(phase_frames(frames, "wf-ended")) == 5
        coordinator.close()


# ---------------------------------------------------------------------- ping


def test_ping_is_answered_with_a_same_id_pong(server: ScriptedServer, client: Coordinator) -> None:
    server.send({"id": "hub-ping-1", "type": "ping", "timestamp": "2026-11-26T22:41:47Z"})
    server.wait_for(lambda s: bool(replies(s, "pong", "hub-ping-1")), 5)
    server.barrier()
    pong = replies(server, "pong", "hub-ping-1")
    assert len(pong) == 1
    raw = json.loads(pong[0].text)
    assert set(raw) == {"id", "type", "timestamp"}  # no workflow_id, no payload
    assert client.stats().sent == 0  # a pong is no application message


def test_pong_goes_ahead_of_queued_traffic() -> None:
    with ScriptedServer(ping_on_open="urgent-ping") as server:
        coordinator = Coordinator(fast_config(server.url))
        total = 4000
        for i in range(total):
            coordinator.send_progress(f"wf-{i}", "act", 1.0, message="x" * 100)
        coordinator.connect()
        server.wait_for(lambda s: bool(replies(s, "pong", "urgent-ping")), 10)
        assert coordinator.flush(10)
        server.barrier()
        frames = [f for f in server.snapshot() if f.type in ("progress", "pong")]
        position = next(
            i for i, f in enumerate(frames) if f.message and f.message.id == "urgent-ping"
        )
        assert sum(1 for f in frames if f.type == "progress") == total
        assert position < total, "the pong waited behind every queued message"
        coordinator.close()


# ---------------------------------------------------------------------- status


def test_status_is_answered_for_a_known_workflow(
    server: ScriptedServer, client: Coordinator
) -> None:
    to_execution(client.phases, "wf-a")
    client.phases.set_progress("wf-a", 42.5, "transform")
    client.phases.register_workflow("wf-b")
    server.send({"id": "st-1", "type": "status", "workflow_id": "wf-a"})
    server.send({"id": "st-2", "type": "status", "payload": {"workflow_id": "wf-b"}})
    # The envelope wins over the payload for status.
    server.send(
        {"id": "st-3", "type": "status", "workflow_id": "wf-a", "payload": {"workflow_id": "wf-b"}}
    )
    server.wait_for(lambda s: s.count("status_response") >= 3, 5)
    first, second, third = (replies(server, "status_response", f"st-{n}") for n in (1, 2, 3))
    assert len(first) == len(second) == len(third) == 1
    assert first[0].workflow_id == "wf-a"
    assert first[0].payload.to_dict() == {
        "workflow_id": "wf-a",
        "phase": "execution",
        "progress": 42.5,
        "current_action": "transform",
        "message": "run",
    }
    assert second[0].payload["workflow_id"] == "wf-b"
    assert second[0].payload["phase"] == "pending"
    assert second[0].payload["progress"] == 0
    assert third[0].payload["workflow_id"] == "wf-a"


def test_status_of_an_unknown_workflow_is_not_answered(
    server: ScriptedServer, client: Coordinator
) -> None:
    client.phases.register_workflow("wf-known")
    server.send({"id": "st-unknown", "type": "status", "workflow_id": "wf-nobody"})
    server.send({"id": "st-known", "type": "status", "workflow_id": "wf-known"})
    server.wait_for(lambda s: bool(replies(s, "status_response", "st-known")), 5)
    server.barrier()
    assert replies(server, "status_response", "st-unknown") == []
    assert server.count("status_response") == 1


# ---------------------------------------------------------------------- commands


def test_pause_resume_cancel_drive_the_phase_manager(
    server: ScriptedServer, client: Coordinator
) -> None:
    commands = Commands(client)
    phases = client.phases
    to_execution(phases, "wf-1")

    server.send(
        {"id": "c1", "type": "pause", "payload": {"workflow_id": "wf-1", "reason": "operator"}}
    )
    event = commands.next()
    assert (event.type, event.workflow_id, event.accepted, event.reason) == (
        "pause",
        "wf-1",
        True,
        "operator",
    )
    assert event.state is not None
    assert event.state.phase is Phase.PAUSING
    assert event.message is not None
    assert event.message.id == "c1"
    assert phases.get_phase("wf-1") is Phase.PAUSING

    phases.complete_pause("wf-1", "cp-7")  # the application's half, at a safe point
    server.send(
        {
            "id": "c2",
            "type": "resume",
            "payload": {"workflow_id": "wf-1", "from_checkpoint": "cp-7"},
        }
    )
    event = commands.next()
    assert (event.type, event.accepted, event.from_checkpoint) == ("resume", True, "cp-7")
    assert phases.get_phase("wf-1") is Phase.RESUMING
    phases.complete_resume("wf-1")

    server.send(
        {
            "id": "c3",
            "type": "cancel",
            "payload": {"workflow_id": "wf-1", "reason": "stop it", "force": True},
        }
    )
    event = commands.next()
    assert (event.type, event.accepted, event.reason, event.force) == (
        "cancel",
        True,
        "stop it",
        True,
    )
    assert phases.get_phase("wf-1") is Phase.CANCELLING
    phases.complete_cancellation("wf-1")

    assert client.flush(5)
    server.barrier()
    steps = [
        (p["from"], p["to"], p.get("reason", ""), p.get("checkpoint_id", ""))
        for p in phase_frames(server.snapshot(), "wf-1")
    ]
    assert steps[3:] == [
        ("execution", "pausing", "operator", ""),
        ("pausing", "paused", "operator", "cp-7"),
        ("paused", "resuming", "resume requested", "cp-7"),
        ("resuming", "execution", "resumed", "cp-7"),
        ("execution", "cancelling", "stop it", "cp-7"),
        ("cancelling", "cancelled", "cancelled", "cp-7"),
    ]


def test_command_workflow_id_comes_from_the_payload_first(
    server: ScriptedServer, client: Coordinator
) -> None:
    commands = Commands(client)
    phases = client.phases
    to_execution(phases, "wf-payload")
    to_execution(phases, "wf-envelope")
    server.send(
        {
            "id": "c1",
            "type": "pause",
            "workflow_id": "wf-envelope",
            "payload": {"workflow_id": "wf-payload", "reason": "r"},
        }
    )
    assert commands.next().workflow_id == "wf-payload"
    assert phases.get_phase("wf-payload") is Phase.PAUSING
    assert phases.get_phase("wf-envelope") is Phase.EXECUTION
    server.send({"id": "c2", "type": "cancel", "workflow_id": "wf-envelope"})  # no payload
    event = commands.next()
    assert (event.workflow_id, event.accepted) == ("wf-envelope", True)
    assert phases.get_phase("wf-envelope") is Phase.CANCELLING


@pytest.mark.parametrize(
    ("setup", "command"),
    [
        ("pending", {"type": "pause", "payload": {"workflow_id": "wf-1", "reason": "r"}}),
        ("execution", {"type": "resume", "payload": {"workflow_id": "wf-1"}}),
        ("completed", {"type": "cancel", "payload": {"workflow_id": "wf-1", "reason": "r"}}),
        ("execution", {"type": "pause", "payload": {"workflow_id": "wf-unknown"}}),
    ],
)
def test_a_refused_command_changes_nothing(
    server: ScriptedServer, client: Coordinator, setup: str, command: dict[str, Any]
) -> None:
    commands = Commands(client)
    phases = client.phases
    phases.register_workflow("wf-1")
    if setup != "pending":
        to_execution_from_pending(phases, "wf-1")
    if setup == "completed":
        phases.complete("wf-1")
    assert client.flush(5)
    server.barrier()
    before_frames = len(phase_frames(server.snapshot()))
    before_state = phases.get_state("wf-1")

    server.send({"id": "refused", **command})
    event = commands.next()
    assert event.accepted is False
    assert event.error
    assert event.state is None
    assert event.type == command["type"]
    server.barrier()
    assert phases.get_state("wf-1") == before_state
    assert len(phase_frames(server.snapshot())) == before_frames
    assert "wf-unknown" not in phases


def to_execution_from_pending(phases: PhaseManager, wf: str) -> None:
    phases.transition_to(wf, "pre-flight")
    phases.transition_to(wf, "planning")
    phases.transition_to(wf, "execution")


# ---------------------------------------------------------------------- handlers


def test_on_message_replaces_the_default_and_none_restores_it(
    server: ScriptedServer, client: Coordinator
) -> None:
    seen: queue.Queue[Message] = queue.Queue()
    client.on_message("ping", seen.put)
    server.send({"id": "p-mine", "type": "ping"})
    assert seen.get(timeout=5).id == "p-mine"
    client.phases.register_workflow("wf-1")
    server.send({"id": "st-1", "type": "status", "workflow_id": "wf-1"})
    server.wait_for(lambda s: bool(replies(s, "status_response", "st-1")), 5)
    assert replies(server, "pong", "p-mine") == []  # the handler replaced the answer

    client.on_message("ping", None)
    server.send({"id": "p-default", "type": "ping"})
    server.wait_for(lambda s: bool(replies(s, "pong", "p-default")), 5)
    assert seen.empty()


def test_async_handlers_and_custom_types(server: ScriptedServer, client: Coordinator) -> None:
    done = threading.Event()
    got: list[Message] = []

    async def on_custom(message: Message) -> None:
        await asyncio.sleep(0)
        got.append(message)
        done.set()

    client.on_message("hub_notice", on_custom)
    server.send({"id": "n-1", "type": "hub_notice", "payload": {"text": "hello"}})
    assert done.wait(5)
    assert got[0].payload == {"text": "hello"}
    assert "unknown type" not in client.stats().inbound_dropped


def test_a_failing_handler_is_logged_and_the_connection_stays(
    server: ScriptedServer, client: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: Message) -> None:
        raise RuntimeError("handler bug")

    client.on_message("status", broken)
    server.send({"id": "st-x", "type": "status", "workflow_id": "wf"})
    server.barrier()
    assert any("handler for 'status'" in r.getMessage() for r in caplog.records)
    assert client.stats().connects == 1
    with pytest.raises(TypeError):
        client.on_message("status", "not callable")  # type: ignore[arg-type]


def test_unknown_types_are_ignored(server: ScriptedServer, client: Coordinator) -> None:
    to_execution(client.phases, "wf-1")
    server.send({"id": "u-1", "type": "hub_gossip", "workflow_id": "wf-1", "payload": {"a": 1}})
    server.barrier()
    stats = client.stats()
    assert stats.inbound_dropped == {"unknown type": 1}
    assert stats.connects == 1
    assert client.phases.get_phase("wf-1") is Phase.EXECUTION


# ---------------------------------------------------------------------- bad input


BAD_FRAMES: list[tuple[str, str | bytes | dict[str, Any], str]] = [
    ("not json", "{not json", "invalid frame"),
    ("json array", "[1, 2]", "invalid frame"),
    ("empty", "", "invalid frame"),
    ("id not a string", {"id": 5, "type": "ping"}, "invalid frame"),
    ("type not a string", {"id": "a", "type": 7}, "invalid frame"),
    ("no type", {"id": "a"}, "invalid frame"),
    ("workflow_id not a string", {"id": "a", "type": "pause", "workflow_id": 9}, "invalid frame"),
    ("payload not an object", {"id": "a", "type": "pause", "payload": []}, "invalid frame"),
    ("bad timestamp", {"id": "a", "type": "ping", "timestamp": "yesterday"}, "invalid frame"),
    (
        "pause reason 5",
        {"id": "a", "type": "pause", "payload": {"workflow_id": "wf-1", "reason": 5}},
        "invalid payload",
    ),
    (
        "cancel force a string",
        {"id": "a", "type": "cancel", "payload": {"workflow_id": "wf-1", "force": "yes"}},
        "invalid payload",
    ),
    (
        "resume checkpoint a list",
        {"id": "a", "type": "resume", "payload": {"workflow_id": "wf-1", "from_checkpoint": []}},
        "invalid payload",
    ),
    (
        "registered service_id a number",
        {"id": "a", "type": "registered", "payload": {"service_id": 5}},
        "invalid payload",
    ),
    ("binary frame", b'{"id":"a","type":"pause","payload":{"workflow_id":"wf-1"}}', "binary frame"),
    (
        "oversized frame",
        {"id": "a", "type": "pause", "payload": {"workflow_id": "wf-1", "reason": "x" * 1500}},
        "oversized frame",
    ),
    (
        "oversized in bytes though not in characters",
        json.dumps(
            {"id": "a", "type": "pause", "payload": {"workflow_id": "wf-1", "reason": "é" * 600}},
            ensure_ascii=False,
        ),
        "oversized frame",
    ),
    ("unknown type", {"id": "a", "type": "shutdown_everything"}, "unknown type"),
]


@pytest.mark.parametrize(
    ("frame", "reason"), [c[1:] for c in BAD_FRAMES], ids=[c[0] for c in BAD_FRAMES]
)
def test_bad_input_is_dropped_counted_and_the_connection_stays(
    server: ScriptedServer,
    client: Coordinator,
    frame: str | bytes | dict[str, Any],
    reason: str,
) -> None:
    commands = Commands(client)
    to_execution(client.phases, "wf-1")
    assert client.flush(5)
    server.barrier()
    before = client.phases.get_state("wf-1")
    phase_count = len(phase_frames(server.snapshot()))

    server.send(frame)
    server.send({"id": "after-bad", "type": "ping"})  # the same connection still answers
    server.wait_for(lambda s: bool(replies(s, "pong", "after-bad")), 5)
    assert [f.connection for f in replies(server, "pong", "after-bad")] == [1]
    stats = client.stats()
    assert stats.inbound_dropped == {reason: 1}
    assert stats.connects == 1
    assert client.phases.get_state("wf-1") == before
    assert len(phase_frames(server.snapshot())) == phase_count
    assert commands.events.empty()
    assert not server.connections[0].closed


def test_a_flood_of_bad_frames_is_counted_and_logged_once(
    server: ScriptedServer, client: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="when_coordinator")
    for i in range(25):
        server.send(f"garbage {i}")
    server.barrier()
    assert client.stats().inbound_dropped == {"invalid frame": 25}
    warnings = [r for r in caplog.records if "dropped invalid frame" in r.getMessage()]
    assert len(warnings) == 1


def test_a_frame_over_four_times_the_limit_closes_only_that_connection(
    server: ScriptedServer, client: Coordinator
) -> None:
    connected = threading.Event()
    client.on_connected(connected.set)
    server.send({"id": "huge", "type": "ping", "payload": {"pad": "x" * 70_000}})
    assert connected.wait(5)  # websockets refuses it; the client dials again
    assert client.wait_registered(5)
    server.send({"id": "after", "type": "ping"})
    server.wait_for(lambda s: bool(replies(s, "pong", "after")), 5)


# ---------------------------------------------------------------------- one message per transition


def test_every_transition_from_many_threads_yields_one_message_in_order(
    server: ScriptedServer, client: Coordinator
) -> None:
    phases = client.phases
    threads, per_thread, cycles = 8, 3, 6
    barrier = threading.Barrier(threads, timeout=10)

    def expected(wf: str) -> list[tuple[str, str, str, str]]:
        steps = [
            ("pending", "pre-flight", f"{wf}: checks", ""),
            ("pre-flight", "planning", f"{wf}: plan", ""),
            ("planning", "execution", f"{wf}: run", ""),
        ]
        checkpoint = ""
        for i in range(cycles):
            steps += [
                ("execution", "pausing", f"{wf}: pause {i}", checkpoint),
                ("pausing", "paused", f"{wf}: pause {i}", f"{wf}-cp{i}"),
                ("paused", "resuming", "resume requested", f"{wf}-cp{i}"),
                ("resuming", "execution", "resumed", f"{wf}-cp{i}"),
            ]
            checkpoint = f"{wf}-cp{i}"
        steps += [
            ("execution", "completing", "completing", checkpoint),
            ("completing", "completed", "completed successfully", checkpoint),
        ]
        return steps

    def drive(t: int) -> None:
        mine = [f"wf-{t}-{k}" for k in range(per_thread)]
        for wf in mine:
            phases.register_workflow(wf)
        barrier.wait()
        for wf in mine:
            phases.transition_to(wf, "pre-flight", f"{wf}: checks")
            phases.transition_to(wf, "planning", f"{wf}: plan")
            phases.transition_to(wf, "execution", f"{wf}: run")
        for i in range(cycles):
            for wf in mine:
                phases.pause(wf, f"{wf}: pause {i}")
                phases.complete_pause(wf, f"{wf}-cp{i}")
                phases.resume(wf)
                phases.complete_resume(wf)
        for wf in mine:
            phases.complete(wf)

    workers = [threading.Thread(target=drive, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert client.flush(10)
    server.barrier()
    frames = server.snapshot()
    total = 0
    for t in range(threads):
        for k in range(per_thread):
            wf = f"wf-{t}-{k}"
            steps = [
                (p["from"], p["to"], p.get("reason", ""), p.get("checkpoint_id", ""))
                for p in phase_frames(frames, wf)
            ]
            assert steps == expected(wf), wf
            total += len(steps)
    assert total == threads * per_thread * (3 + 4 * cycles + 2)
    assert len(phase_frames(frames)) == total
    ids = [f.message.id for f in frames if f.message and f.type == "phase_changed"]
    assert len(set(ids)) == len(ids)
    stats = client.stats()
    assert stats.sent == stats.delivered == total


def test_phase_messages_carry_the_state_of_their_own_transition(
    server: ScriptedServer, client: Coordinator
) -> None:
    # Transitions made faster than the client sends: each message must still describe its own
    # transition, not the state the workflow reached later.
    phases = client.phases
    phases.register_workflow("wf-fast")
    to_execution_from_pending(phases, "wf-fast")
    phases.pause("wf-fast", "first")
    phases.complete_pause("wf-fast", "cp-a")
    phases.resume("wf-fast", "cp-b")
    phases.complete_resume("wf-fast")
    phases.fail("wf-fast", "exploded")
    assert client.flush(5)
    server.barrier()
    frames = [f for f in server.snapshot() if f.type == "phase_changed"]
    assert [(f.payload["to"], f.payload.get("checkpoint_id", "")) for f in frames] == [
        ("pre-flight", ""),
        ("planning", ""),
        ("execution", ""),
        ("pausing", ""),
        ("paused", "cp-a"),
        ("resuming", "cp-b"),
        ("execution", "cp-b"),
        ("failed", "cp-b"),
    ]
    assert all(f.workflow_id == "wf-fast" for f in frames)
    assert frames[-1].payload["reason"] == "exploded"
    wait_until(lambda: client.stats().inflight == 0, 5)


def test_refused_and_unanswerable_commands_are_logged_at_a_bounded_rate(
    server: ScriptedServer, client: Coordinator, caplog: pytest.LogCaptureFixture
) -> None:
    # 2,000 such frames once made 382 MiB of host log in 5 s: one line per kind per interval.
    caplog.set_level(logging.DEBUG, logger="when_coordinator")
    to_execution(client.phases, "wf-1")
    commands = Commands(client)
    for i in range(300):
        server.send({"id": f"p-{i}", "type": "pause", "payload": {"workflow_id": f"nope-{i}"}})
        server.send({"id": f"r-{i}", "type": "resume", "payload": {"workflow_id": "wf-1"}})
        server.send({"id": f"s-{i}", "type": "status", "payload": {"workflow_id": f"nope-{i}"}})
        server.send({"id": f"u-{i}", "type": "reboot", "payload": {}})
    server.barrier()
    records = [r for r in caplog.records if r.name.startswith("when_coordinator")]
    assert len(records) <= 3, [r.getMessage() for r in records]
    assert any("refused pause" in r.getMessage() for r in records)
    assert any("unknown workflow" in r.getMessage() for r in records)
    # Every refusal still reaches on_command, and the connection stays.
    refused = [commands.next() for _ in range(600)]
    assert not any(event.accepted for event in refused)
    assert client.stats().inbound_dropped == {"unknown type": 300}
    assert client.stats().connects == 1
    assert client.phases.get_phase("wf-1") is Phase.EXECUTION
