"""The hub over real loopback sockets, driven by raw JSON clients (no Coordinator, no mocks)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode

from when_coordinator.hub import (
    CommandRefused,
    Health,
    Hub,
    HubClosed,
    ServiceUnavailable,
    StatusTimeout,
    WorkflowNotFound,
)
from when_coordinator.hub.testing import RawService, frame
from when_coordinator.protocol import Phase, StatusResponsePayload

# The repository is checked out next to the shared directory (as CI does).
TRANSCRIPT = Path(__file__).resolve().parents[3] / "shared/wire/reference-client-transcript.jsonl"


def transcript() -> list[dict[str, Any]]:
    return [json.loads(line) for line in TRANSCRIPT.read_text().splitlines() if line.strip()]


async def received_id(hub: Hub, message_id: str) -> None:
    """Wait until the hub has processed the message with this id."""
    await hub.wait_for(lambda h: any(r.message.id == message_id for r in h.received))


# --------------------------------------------------------------------------- the transcript


async def test_replaying_the_reference_transcript_gives_the_expected_state_and_commands() -> None:
    lines = transcript()
    opening = lines[0]
    assert opening["dir"] == "open"
    headers = {k: v for k, v in opening["headers"].items() if k.lower().startswith("x-")}

    async with Hub(ping_interval=0.1) as hub:
        client = await RawService.connect(
            hub.url, service_name="", headers=headers, auto_pong=False
        )
        ping: dict[str, Any] = {}
        status_requests: dict[str, dict[str, Any]] = {}
        status_tasks: dict[str, asyncio.Task[StatusResponsePayload]] = {}
        sent_types: list[str] = []
        for line in lines[1:]:
            if line["dir"] == "close":
                break
            original = json.loads(line["frame"])
            kind = original["type"]
            if line["dir"] == "in":
                outgoing = dict(original)
                if kind == "pong":  # answer the hub's own ping, as the Go client did
                    outgoing["id"] = ping["id"]
                if kind == "status_response":
                    outgoing["id"] = status_requests[original["workflow_id"]]["id"]
                await client.send(outgoing)
                sent_types.append(kind)
                await received_id(hub, outgoing["id"])
                await check_intermediate(hub, original)
                continue
            # Hub to client: make our hub send the same thing and compare the shape.
            wf = original.get("workflow_id", "")
            payload = original.get("payload", {})
            if kind == "registered":
                got = await client.expect("registered")
                assert got["payload"] == {
                    "service_id": "svc-go-1",
                    "instance_id": "inst-1",
                    "message": got["payload"]["message"],
                    "protocol_version": "1.0",
                    "hub_protocol_version": "1.1",
                }
                continue
            if kind == "ping":
                ping = await client.expect("ping")
                assert set(ping) == {"id", "type", "timestamp"}
                continue
            if kind == "status":
                known = wf in hub.workflows
                status_tasks[wf] = asyncio.ensure_future(
                    hub.status(wf, 5.0 if known else 0.3, service_id="svc-go-1")
                )
                got = await client.expect("status")
                assert (got["workflow_id"], got["payload"]) == (wf, {"workflow_id": wf})
                status_requests[wf] = got
                continue
            if kind == "cancel" and hub.workflows[wf].phase.is_terminal:
                # The transcript's hub cancelled a completed workflow ("too late") and the
                # Go client refused it; ours refuses it itself (409) and sends nothing.
                with pytest.raises(CommandRefused, match="phase is completed"):
                    await hub.cancel(wf, payload["reason"])
                continue
            if kind == "pause":
                await hub.pause(wf, payload["reason"])
            elif kind == "resume":
                await hub.resume(wf, payload["from_checkpoint"])
            elif kind == "cancel":
                await hub.cancel(wf, payload["reason"], payload.get("force", False))
            else:
                continue  # the transcript's hub also sent an unknown type; ours does not
            got = await client.expect(kind)
            assert got["workflow_id"] == wf
            assert got["payload"] == payload
            assert got["id"].startswith("msg-")

        answer = await status_tasks["wf-1"]
        assert answer == StatusResponsePayload(
            workflow_id="wf-1", phase=Phase.EXECUTION, progress=25.5, current_action="extract"
        )
        with pytest.raises(StatusTimeout, match="wf-unknown"):
            await status_tasks["wf-unknown"]

        # Every accepted frame is recorded in arrival order, attributed to the service.
        assert [r.message.type for r in hub.received] == sent_types
        assert {r.service_id for r in hub.received} == {"svc-go-1"}
        check_final(hub)
        await client.close()


async def check_intermediate(hub: Hub, original: dict[str, Any]) -> None:
    """What a person expects right after some of the transcript's frames."""
    payload = original.get("payload", {})
    if original["type"] == "progress":
        wf = hub.workflows["wf-1"]
        assert (wf.progress, wf.stage) == (payload["percent"], payload["stage"])
        assert wf.action_id == "act-1"
    if original["id"] == "msg-zicapy9eqixu-700996":  # wf-2's first completing -> completed
        assert hub.workflows["wf-2"].phase is Phase.COMPLETED


def check_final(hub: Hub) -> None:
    service = hub.services["svc-go-1"]
    assert (service.service_name, service.instance_id, service.version) == (
        "goservice",
        "inst-1",
        "1.2.3",
    )
    assert service.capabilities == ("build", "deploy")
    assert (service.schema_version, service.protocol_version) == (7, "1.0")
    assert (service.header_service_id, service.header_service_name) == ("svc-go-1", "goservice")
    assert service.last_pong_at > 0
    assert service.rtt is not None

    assert set(hub.workflows) == {"wf-1", "wf-2"}
    wf1, wf2 = hub.workflows["wf-1"], hub.workflows["wf-2"]
    assert (wf2.parent_workflow_id, wf2.root_workflow_id, wf1.root_workflow_id) == (
        "wf-1",
        "wf-1",
        "wf-1",
    )
    assert wf1.children == ("wf-2",)
    assert (wf1.action_type, wf2.action_type) == ("ETLAction", "Child")

    assert wf1.phase is Phase.CANCELLED
    assert [c.to_phase.value for c in wf1.history] == [
        "execution",
        "paused",
        "resuming",
        "execution",
        "cancelling",
        "cancelled",
    ]
    assert wf1.history[1].reason == "operator pause"
    # The status reply says 25.5 (the Go client's SetProgress value) after progress said 50:
    # a status reply never moves progress backwards (an anomaly instead).
    assert (wf1.progress, wf1.stage, wf1.current_action) == (50.0, "transform", "extract")
    assert wf1.checkpoint_id == "cp-1"
    assert [c.checkpoint_id for c in wf1.checkpoints] == ["cp-0", "cp-1"]
    assert wf1.checkpoints[0].reason == "periodic"
    assert [(e.error, e.recoverable, e.action_id) for e in wf1.errors] == [
        ("transient timeout", True, "act-1")
    ]
    # planning->execution came without its predecessors, then twice more; pausing->paused
    # came without execution->pausing, then once more; the status reply's older progress.
    assert wf1.anomaly_count == 6
    assert (
        sum("reports progress 25.5 but the workflow reported 50" in a for a in wf1.anomalies) == 1
    )
    assert sum("duplicate" in a for a in wf1.anomalies) == 3

    assert wf2.phase is Phase.COMPLETED
    assert len(wf2.history) == 1
    assert wf2.anomaly_count == 5
    assert sum("duplicate" in a for a in wf2.anomalies) == 4

    logs = hub.logs
    assert [(r.level, r.message) for r in logs] == [
        ("info", "plain info"),
        ("warn", "ctx warn"),
        ("warn", "hooked warn"),
        ("debug", "batched 0"),
        ("debug", "batched 1"),
        ("debug", "batched 2"),
    ]
    assert dict(logs[0].entry.fields) == {"name": "x", "ratio": 0.5, "rows": 3}
    hooked = logs[2].entry
    assert (hooked.source_file, hooked.source_line, hooked.trace_id) == ("main.go", 250, "abc")
    assert dict(hooked.fields) == {"other": "o"}
    assert {r.service_id for r in logs} == {"svc-go-1"}
    assert [r.message for r in hub.logs_for("wf-1")] == [
        "ctx warn",
        "hooked warn",
        "batched 0",
        "batched 1",
        "batched 2",
    ]
    assert hub.logs_evicted == 0


# --------------------------------------------------------------------------- registration


async def test_registration_keeps_or_assigns_ids_and_several_services_coexist() -> None:
    async with Hub() as hub:
        own = await RawService.connect(hub.url, service_name="alpha")
        header = await RawService.connect(hub.url, service_name="beta", service_id="beta-7")
        bare = await RawService.connect(hub.url, service_name="")
        first = await own.register("alpha", service_id="alpha-1", instance_id="i-1")
        second = await header.register("beta")
        third = await bare.register("gamma", protocol_version="1.9")
        assert first["payload"]["service_id"] == "alpha-1"
        assert first["payload"]["instance_id"] == "i-1"
        assert second["payload"]["service_id"] == "beta-7"
        assert third["payload"]["service_id"] == "svc-1"
        assert third["payload"]["protocol_version"] == "1.1"
        assert third["type"] == "registered"
        assert set(hub.services) == {"alpha-1", "beta-7", "svc-1"}
        assert all(s.health is Health.HEALTHY for s in hub.services.values())
        assert hub.services["beta-7"].header_service_name == "beta"
        for client in (own, header, bare):
            await client.close()
        await hub.wait_for(
            lambda h: all(s.health is Health.DISCONNECTED for s in h.services.values())
        )
        assert hub.services["alpha-1"].close_code == 1000


async def test_another_major_protocol_version_is_refused_with_a_close_reason() -> None:
    async with Hub() as hub:
        good = await RawService.connect(hub.url)
        await good.register("good")
        bad = await RawService.connect(hub.url)
        await bad.send(frame("register", payload={"service_name": "x", "protocol_version": "2.0"}))
        code, reason = await bad.closed()
        assert code == 1002
        assert "2.0" in reason
        assert "1.x" in reason
        await good.send(frame("progress", "wf-g", {"workflow_id": "wf-g", "percent": 5}))
        await hub.wait_for(lambda h: "wf-g" in h.workflows)
        await good.close()


async def test_traffic_before_register_is_kept_and_flagged() -> None:
    async with Hub() as hub:
        client = await RawService.connect(hub.url, service_id="early")
        await client.send(frame("progress", "wf-e", {"workflow_id": "wf-e", "percent": 1}))
        await client.register("early")
        service = hub.services["early"]
        assert service.registered
        assert service.anomalies == ("'progress' received before register",)
        assert hub.workflows["wf-e"].service_id == "early"
        await client.close()


async def test_messages_sent_with_the_upgrade_request_are_applied_in_order() -> None:
    """A client that sends its first messages in the same write as its upgrade request: they
    are parsed before the hub's handler runs, and applied once it does, in order."""
    async with Hub() as hub:
        register = {"service_name": "eager", "service_id": "eager", "protocol_version": "1.0"}
        progress = {"workflow_id": "wf-x", "percent": 7}
        texts = [json.dumps(frame("register", payload=register))]
        texts.append(json.dumps(frame("progress", "wf-x", progress)))
        request = (
            f"GET /v1/coordination HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        frames = [Frame(Opcode.TEXT, text.encode()).serialize(mask=True) for text in texts]
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        try:
            writer.write(request + b"".join(frames))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 101")
            await hub.wait_for(lambda h: h.workflows["wf-x"].progress == 7)
            service = hub.services["eager"]
            assert service.registered
            assert service.anomalies == ()  # the register came first
        finally:
            writer.close()


async def test_other_paths_are_404_and_both_coordination_paths_work() -> None:
    async with Hub() as hub:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{hub.port}/elsewhere")
        assert refused.value.response.status_code == 404
        legacy = await RawService.connect(f"ws://127.0.0.1:{hub.port}/ws/coordination")
        reply = await legacy.register("legacy")
        assert reply["payload"]["service_id"] == "svc-1"
        assert hub.connections["conn-1"].path == "/ws/coordination"
        await legacy.close()


# --------------------------------------------------------------------------- commands


async def service_with_workflow(hub: Hub, name: str, workflow_id: str) -> RawService:
    client = await RawService.connect(hub.url, service_name=name)
    await client.register(name, service_id=name)
    change = {"workflow_id": workflow_id, "from": "planning", "to": "execution", "reason": "go"}
    await client.send(frame("phase_changed", workflow_id, change))
    connection_id = hub.services[name].connection_id
    await hub.wait_for(lambda h: h.workflows[workflow_id].connection_id == connection_id)
    return client


async def test_commands_go_to_the_service_that_owns_the_workflow() -> None:
    async with Hub() as hub:
        a = await service_with_workflow(hub, "svc-a", "wf-a")
        b = await service_with_workflow(hub, "svc-b", "wf-b")
        sent = await hub.pause("wf-a", "maintenance")
        got = await a.expect("pause")
        assert got["id"] == sent.id
        assert (got["workflow_id"], got["payload"]) == (
            "wf-a",
            {"workflow_id": "wf-a", "reason": "maintenance"},
        )
        await hub.cancel("wf-b", "stop", force=True)
        got = await b.expect("cancel")
        assert got["payload"] == {"workflow_id": "wf-b", "reason": "stop", "force": True}
        for source, target in (("execution", "pausing"), ("pausing", "paused")):
            change = {"workflow_id": "wf-a", "from": source, "to": target}
            await a.send(frame("phase_changed", "wf-a", change))
        await hub.wait_for(lambda h: h.workflows["wf-a"].phase == "paused")
        await hub.resume("wf-a", "cp-9")
        got = await a.expect("resume")
        assert got["payload"] == {"workflow_id": "wf-a", "from_checkpoint": "cp-9"}
        assert a.inbox.empty()
        assert b.inbox.empty()
        assert [(s.service_id, str(s.message.type)) for s in hub.sent][-3:] == [
            ("svc-a", "pause"),
            ("svc-b", "cancel"),
            ("svc-a", "resume"),
        ]

        with pytest.raises(WorkflowNotFound, match="wf-nope"):
            await hub.pause("wf-nope")
        await a.close()
        await hub.wait_for(lambda h: not h.services["svc-a"].connected)
        with pytest.raises(ServiceUnavailable, match="svc-a"):
            await hub.cancel("wf-a")
        await b.close()


async def test_a_reconnected_service_receives_the_commands() -> None:
    async with Hub() as hub:
        old = await service_with_workflow(hub, "svc-r", "wf-r")
        # The new connection replays the phase (as clients do after registering), which
        # makes it the workflow's route even while the old connection is still open.
        new = await service_with_workflow(hub, "svc-r", "wf-r")
        await hub.pause("wf-r")
        await new.expect("pause")
        await old.close()
        await hub.wait_for(lambda h: not h.connections["conn-1"].is_open)
        assert hub.services["svc-r"].connected
        await hub.cancel("wf-r")
        await new.expect("cancel")
        assert old.inbox.empty()
        await new.close()


async def test_status_round_trip_timeout_and_disconnect() -> None:
    async with Hub() as hub:
        client = await service_with_workflow(hub, "svc-s", "wf-s")
        task = asyncio.ensure_future(hub.status("wf-s"))
        request = await client.expect("status")
        assert request["payload"] == {"workflow_id": "wf-s"}
        answer = {"workflow_id": "wf-s", "phase": "execution", "progress": 42, "message": "m"}
        await client.send(frame("status_response", "wf-s", answer, id=request["id"]))
        result = await task
        assert (result.phase, result.progress, result.message) == (Phase.EXECUTION, 42, "m")
        assert hub.workflows["wf-s"].progress == 42

        with pytest.raises(StatusTimeout, match=r"within 0\.2 s") as timed_out:
            await hub.status("wf-s", timeout=0.2)
        assert isinstance(timed_out.value, TimeoutError)

        task = asyncio.ensure_future(hub.status("wf-s"))
        await client.expect("status")
        await client.close()
        with pytest.raises(ServiceUnavailable, match="disconnected"):
            await task


# --------------------------------------------------------------------------- health


async def test_pings_are_answered_or_the_service_turns_late_then_disconnected() -> None:
    async with Hub(ping_interval=0.05, pong_timeout=0.12) as hub:
        lively = await RawService.connect(hub.url)
        await lively.register("lively", service_id="lively")
        silent = await RawService.connect(hub.url, auto_pong=False)
        await silent.register("silent", service_id="silent")
        await hub.wait_for(lambda h: h.services["silent"].health is Health.LATE)
        await hub.wait_for(lambda h: h.services["lively"].last_pong_at > 0)
        lively_state = hub.services["lively"]
        assert lively_state.health is Health.HEALTHY
        assert lively_state.rtt is not None
        assert lively_state.rtt < 1.0
        assert lively_state.anomaly_count == 0
        ping = await silent.expect("ping")
        await silent.send({"id": ping["id"], "type": "pong"})
        await hub.wait_for(lambda h: h.services["silent"].last_pong_at > 0)
        await silent.close()
        await hub.wait_for(lambda h: h.services["silent"].health is Health.DISCONNECTED)
        assert hub.services["lively"].health is Health.HEALTHY
        await lively.close()


# --------------------------------------------------------------------------- authentication


async def test_a_token_is_required_at_the_handshake_when_configured() -> None:
    async with Hub(token="s3cret-token") as hub:
        for token in (None, "wrong", ""):
            with pytest.raises(InvalidStatus) as refused:
                await RawService.connect(hub.url, token=token)
            assert refused.value.response.status_code == 401
            assert b"s3cret" not in refused.value.response.body
        client = await RawService.connect(hub.url, token="s3cret-token")
        reply = await client.register("trusted")
        assert reply["payload"]["service_id"] == "svc-1"
        assert len(hub.connections) == 1
        await client.close()


# --------------------------------------------------------------------------- lifecycle


async def test_wait_for_times_out_naming_the_predicate_and_its_last_error() -> None:
    async with Hub() as hub:
        with pytest.raises(TimeoutError, match=r"wf-missing.*KeyError"):
            await hub.wait_for(lambda h: h.workflows["wf-missing"], timeout=0.05)
        assert await hub.wait_for(lambda h: h.port) == hub.port


async def test_closing_the_hub_closes_connections_and_fails_waiters() -> None:
    hub = await Hub().start()
    client = await RawService.connect(hub.url)
    await client.register("c")
    waiter = asyncio.ensure_future(hub.wait_for(lambda h: False, timeout=5))
    await asyncio.sleep(0)
    await hub.close()
    code, _ = await client.closed()
    assert code == 1001
    with pytest.raises(HubClosed):
        await waiter
    with pytest.raises(HubClosed):
        await hub.pause("wf")
    await hub.close()  # idempotent
