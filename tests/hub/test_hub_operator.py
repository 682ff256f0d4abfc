"""The operator interface: HTTP JSON API and the operator WebSocket, on the hub's port."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from when_coordinator.hub import CommandRefused, Hub
from when_coordinator.hub.testing import RawService, frame


def _http(url: str, method: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = b"" if method == "POST" else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode()


async def http(
    hub: Hub, path: str, method: str = "GET", token: str | None = None
) -> tuple[int, Any]:
    """One request from a worker thread (the hub runs on this thread's loop)."""
    return await asyncio.to_thread(_http, hub.http_url + path, method, token)


async def populated(hub: Hub) -> RawService:
    """A service with a parent and a child workflow, progress, an error and logs."""
    client = await RawService.connect(hub.url, service_name="etl")
    await client.register("etl", service_id="etl-1")
    sends = [
        frame("workflow_created", "wf-1", {"workflow_id": "wf-1", "action_type": "ETL"}),
        frame(
            "phase_changed", "wf-1", {"workflow_id": "wf-1", "from": "planning", "to": "execution"}
        ),
        frame("progress", "wf-1", {"workflow_id": "wf-1", "percent": 50, "stage": "load"}),
        frame("error", "wf-1", {"workflow_id": "wf-1", "error": "slow disk", "recoverable": True}),
        frame("workflow_created", "wf-2", {"workflow_id": "wf-2", "parent_workflow_id": "wf-1"}),
        frame("phase_changed", "wf-2", {"workflow_id": "wf-2", "from": "", "to": "pending"}),
        frame("log", payload={"level": "info", "message": "hello", "workflow_id": "wf-1"}),
        frame("log", payload={"level": "error", "message": "oops", "workflow_id": "wf-2"}),
    ]
    for message in sends:
        await client.send(message)
    await hub.wait_for(lambda h: len(h.logs) == 2)
    return client


async def test_http_read_api() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        status, body = await http(hub, "/healthz")
        assert (status, body["status"], body["services"], body["workflows"]) == (
            200,
            "ok",
            1,
            2,
        )
        status, body = await http(hub, "/v1/services")
        assert status == 200
        assert [s["service_id"] for s in body["services"]] == ["etl-1"]
        assert body["services"][0]["health"] == "healthy"

        status, body = await http(hub, "/v1/workflows")
        assert status == 200
        summaries = {w["workflow_id"]: w for w in body["workflows"]}
        assert summaries["wf-1"]["phase"] == "execution"
        assert summaries["wf-1"]["progress"] == 50
        assert summaries["wf-1"]["children"] == ["wf-2"]
        assert summaries["wf-1"]["last_error"] == "slow disk"
        assert "history" not in summaries["wf-1"]
        _, body = await http(hub, "/v1/workflows?phase=pending")
        assert [w["workflow_id"] for w in body["workflows"]] == ["wf-2"]

        status, body = await http(hub, "/v1/workflows/wf-1")
        assert status == 200
        assert [(c["from"], c["to"]) for c in body["history"]] == [("planning", "execution")]
        assert body["errors"][0]["error"] == "slow disk"
        assert [entry["message"] for entry in body["logs"]] == ["hello"]
        assert body["anomalies"]

        status, body = await http(hub, "/v1/workflows/wf-nope")
        assert (status, body["code"]) == (404, "unknown_workflow")

        _, body = await http(hub, "/v1/logs?workflow_id=wf-2")
        assert [entry["message"] for entry in body["logs"]] == ["oops"]
        _, body = await http(hub, "/v1/logs?level=info&limit=5")
        assert [entry["message"] for entry in body["logs"]] == ["hello"]
        assert (body["evicted"], body["total"]) == (0, 2)

        _, body = await http(hub, "/v1/connections")
        assert body["connections"][0]["service_id"] == "etl-1"

        assert (await http(hub, "/v1/nothing"))[0] == 404
        assert (await http(hub, "/elsewhere"))[0] == 404
        assert (await http(hub, "/v1/workflows/wf-1/pause"))[0] == 405
        assert (await http(hub, "/v1/services", "POST"))[0] == 405
        status, _ = await http(hub, "/v1/logs?limit=many")
        assert status == 400
        await client.close()


async def test_http_commands_reach_the_service() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        status, body = await http(hub, "/v1/workflows/wf-1/pause?reason=db%20work", "POST")
        assert (status, body["service_id"]) == (200, "etl-1")
        got = await client.expect("pause")
        assert (got["id"], got["payload"]["reason"]) == (body["sent"], "db work")
        await http(hub, "/v1/workflows/wf-1/cancel?force=true", "POST")
        got = await client.expect("cancel")
        assert got["payload"] == {"workflow_id": "wf-1", "force": True}

        async def answer() -> None:
            request = await client.expect("status")
            reply = {"workflow_id": "wf-1", "phase": "execution", "progress": 60}
            await client.send(frame("status_response", "wf-1", reply, id=request["id"]))

        answering = asyncio.ensure_future(answer())
        status, body = await http(hub, "/v1/workflows/wf-1/status", "POST")
        await answering
        assert (status, body) == (
            200,
            {"workflow_id": "wf-1", "phase": "execution", "progress": 60},
        )

        status, body = await http(hub, "/v1/workflows/wf-1/status?timeout=0.1", "POST")
        assert (status, body["code"]) == (504, "timeout")
        status, body = await http(hub, "/v1/workflows/wf-1/status?timeout=60", "POST")
        assert (status, body["code"]) == (400, "bad_request")
        status, body = await http(hub, "/v1/workflows/wf-x/pause", "POST")
        assert (status, body["code"]) == (404, "unknown_workflow")
        await client.close()
        await hub.wait_for(lambda h: not h.services["etl-1"].connected)
        status, body = await http(hub, "/v1/workflows/wf-1/pause", "POST")
        assert (status, body["code"]) == (503, "unavailable")


async def test_operator_api_needs_the_token_except_healthz() -> None:
    async with Hub(token="op-token") as hub:
        assert (await http(hub, "/healthz"))[0] == 200
        for token in (None, "nope"):
            assert (await http(hub, "/v1/workflows", token=token))[0] == 401
            assert (await http(hub, "/v1/workflows/x/pause", "POST", token))[0] == 401
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            with pytest.raises(InvalidStatus) as refused:
                await connect(hub.operator_url, additional_headers=headers)
            assert refused.value.response.status_code == 401
        status, body = await http(hub, "/v1/workflows", token="op-token")
        assert (status, body) == (200, {"workflows": []})
        headers = {"Authorization": "Bearer op-token"}
        async with connect(hub.operator_url, additional_headers=headers) as ws:
            assert (await request(ws, "workflows"))["result"] == []


# --------------------------------------------------------------------------- WebSocket

_ids = iter(range(1, 1_000_000))


async def request(ws: ClientConnection, op: str, **params: Any) -> dict[str, Any]:
    """Send one request and return its reply (events that arrive meanwhile are skipped)."""
    request_id = next(_ids)
    await ws.send(json.dumps({"id": request_id, "op": op, **params}))
    while True:
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if reply.get("id") == request_id:
            return reply


async def next_event(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if event.get("event") == kind:
            return event


async def test_operator_websocket_requests_and_errors() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        async with connect(hub.operator_url) as ws:
            reply = await request(ws, "workflows")
            assert reply["ok"]
            assert {w["workflow_id"] for w in reply["result"]} == {"wf-1", "wf-2"}
            reply = await request(ws, "workflow", workflow_id="wf-2")
            assert reply["result"]["parent_workflow_id"] == "wf-1"
            reply = await request(ws, "services")
            assert reply["result"][0]["service_id"] == "etl-1"

            reply = await request(ws, "pause", workflow_id="wf-1", reason="ops")
            assert reply["ok"]
            assert (await client.expect("pause"))["id"] == reply["result"]["sent"]
            for source, target in (("execution", "pausing"), ("pausing", "paused")):
                change = {"workflow_id": "wf-1", "from": source, "to": target}
                await client.send(frame("phase_changed", "wf-1", change))
            await hub.wait_for(lambda h: h.workflows["wf-1"].phase == "paused")
            await request(ws, "resume", workflow_id="wf-1", from_checkpoint="cp-3")
            assert (await client.expect("resume"))["payload"]["from_checkpoint"] == "cp-3"

            status = asyncio.ensure_future(request(ws, "status", workflow_id="wf-1"))
            asked = await client.expect("status")
            answer = {"workflow_id": "wf-1", "phase": "paused", "progress": 51}
            await client.send(frame("status_response", "wf-1", answer, id=asked["id"]))
            assert (await status)["result"]["phase"] == "paused"

            bad = await request(ws, "pause")
            assert (bad["ok"], bad["code"]) == (False, "bad_request")
            bad = await request(ws, "cancel", workflow_id="wf-zz")
            assert bad["code"] == "unknown_workflow"
            bad = await request(ws, "explode")
            assert bad["code"] == "unknown_op"
            await ws.send("not json")
            bad = json.loads(await ws.recv())
            assert (bad["id"], bad["code"]) == (None, "bad_request")
            assert (await request(ws, "services"))["ok"]  # still usable
        await client.close()


async def test_operator_websocket_streams_events_after_a_snapshot() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        async with connect(hub.operator_url) as ws:
            reply = await request(ws, "subscribe", logs=True)
            assert reply["result"]["subscribed"]
            snapshot = await next_event(ws, "snapshot")
            assert {w["workflow_id"] for w in snapshot["workflows"]} == {"wf-1", "wf-2"}
            assert hub.watchers == 1

            change = {
                "workflow_id": "wf-1",
                "from": "execution",
                "to": "pausing",
                "reason": "r",
            }
            await client.send(frame("phase_changed", "wf-1", change))
            event = await next_event(ws, "phase_changed")
            assert (event["workflow_id"], event["from"], event["to"], event["reason"]) == (
                "wf-1",
                "execution",
                "pausing",
                "r",
            )
            update = await next_event(ws, "workflow")
            assert update["workflow"]["phase"] == "pausing"

            await client.send(frame("log", payload={"level": "warn", "message": "careful"}))
            event = await next_event(ws, "log")
            assert (event["level"], event["message"], event["service_id"]) == (
                "warn",
                "careful",
                "etl-1",
            )
            await request(ws, "unsubscribe")
            await hub.wait_for(lambda h: h.watchers == 0)
        await client.close()


async def test_a_scoped_subscription_only_sees_that_workflow_tree() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        async with connect(hub.operator_url) as ws:
            await request(ws, "subscribe", workflow_id="wf-2")
            snapshot = await next_event(ws, "snapshot")
            assert [w["workflow_id"] for w in snapshot["workflows"]] == ["wf-2"]
            for workflow_id in ("wf-1", "wf-2"):
                change = {"workflow_id": workflow_id, "from": "pending", "to": "failed"}
                await client.send(frame("phase_changed", workflow_id, change))
            event = await next_event(ws, "phase_changed")
            assert event["workflow_id"] == "wf-2"
            update = await next_event(ws, "workflow")
            assert update["workflow"]["workflow_id"] == "wf-2"
        await client.close()


# --------------------------------------------------------------------------- refused commands


async def test_a_command_the_phase_forbids_is_refused_with_409_the_phase_and_what_it_allows() -> (
    None
):
    async with Hub() as hub:
        client = await populated(hub)  # wf-1 executing, wf-2 pending
        status, body = await http(hub, "/v1/workflows/wf-1/resume", "POST")
        assert (status, body["code"], body["phase"], body["allowed"]) == (
            409,
            "conflict",
            "execution",
            ["pause", "cancel"],
        )
        assert body["error"] == (
            "cannot resume workflow 'wf-1': its phase is execution; it allows pause and cancel"
        )
        change = {"workflow_id": "wf-2", "from": "pending", "to": "failed"}
        await client.send(frame("phase_changed", "wf-2", change))
        change = {"workflow_id": "wf-1", "from": "execution", "to": "pausing"}
        await client.send(frame("phase_changed", "wf-1", change))
        await hub.wait_for(lambda h: h.workflows["wf-1"].phase == "pausing")
        for command in ("pause", "resume", "cancel"):
            status, body = await http(hub, f"/v1/workflows/wf-2/{command}", "POST")
            assert (status, body["phase"], body["allowed"]) == (409, "failed", [])
            assert "it has finished" in body["error"]
        status, body = await http(hub, "/v1/workflows/wf-1/pause", "POST")
        assert (status, body["phase"], body["allowed"]) == (409, "pausing", ["cancel"])

        async with connect(hub.operator_url) as ws:
            reply = await request(ws, "resume", workflow_id="wf-1")
            assert (reply["ok"], reply["code"], reply["phase"], reply["allowed"]) == (
                False,
                "conflict",
                "pausing",
                ["cancel"],
            )
            reply = await request(ws, "cancel", workflow_id="wf-2", force=True)
            assert (reply["code"], reply["phase"]) == ("conflict", "failed")
            with pytest.raises(CommandRefused) as refused:
                await hub.resume("wf-1")
            assert (refused.value.phase, refused.value.allowed) == ("pausing", ("cancel",))
            # Nothing was sent for any of them; an allowed command still goes through.
            assert [str(s.message.type) for s in hub.sent] == ["registered"]
            reply = await request(ws, "cancel", workflow_id="wf-1", reason="stop")
            assert reply["ok"]
            got = await client.recv()
            assert (got["type"], got["id"]) == ("cancel", reply["result"]["sent"])
        await client.close()


# --------------------------------------------------------------------------- id prefixes


async def test_a_unique_prefix_stands_for_a_workflow_id_everywhere_an_id_is_taken() -> None:
    async with Hub() as hub:
        client = await populated(hub)
        long_ids = ("wf-3f2a9c", "wf-3f2b17", "wf-3")  # "wf-3" is also a prefix of both
        for workflow_id in long_ids:
            created = {"workflow_id": workflow_id, "action_type": "load"}
            await client.send(frame("workflow_created", workflow_id, created))
        await hub.wait_for(lambda h: "wf-3" in h.workflows)

        status, body = await http(hub, "/v1/workflows/wf-3f2a")
        assert (status, body["workflow_id"]) == (200, "wf-3f2a9c")
        status, body = await http(hub, "/v1/workflows/wf-3")  # exact beats prefix
        assert (status, body["workflow_id"]) == (200, "wf-3")
        status, body = await http(hub, "/v1/workflows/wf-3f2")
        assert (status, body["code"], body["candidates"]) == (
            400,
            "ambiguous",
            ["wf-3f2a9c", "wf-3f2b17"],
        )
        assert "'wf-3f2' is ambiguous" in body["error"]
        assert "wf-3f2a9c, wf-3f2b17" in body["error"]
        status, body = await http(hub, "/v1/workflows/wf-9")
        assert (status, body["code"]) == (404, "unknown_workflow")
        status, body = await http(hub, "/v1/logs?workflow_id=wf-9")
        assert (status, body["code"]) == (404, "unknown_workflow")

        status, body = await http(hub, "/v1/workflows/wf-3f2b/cancel?reason=x", "POST")
        assert (status, body["workflow_id"]) == (200, "wf-3f2b17")
        assert (await client.expect("cancel"))["workflow_id"] == "wf-3f2b17"
        status, body = await http(hub, "/v1/workflows/wf-3f/cancel", "POST")
        assert (status, body["code"]) == (400, "ambiguous")

        await client.send(frame("log", payload={"message": "m", "workflow_id": "wf-3f2a9c"}))
        await hub.wait_for(lambda h: len(h.logs) == 3)
        status, body = await http(hub, "/v1/logs?workflow_id=wf-3f2a")
        assert [r["message"] for r in body["logs"]] == ["m"]

        async with connect(hub.operator_url) as ws:
            reply = await request(ws, "workflow", workflow_id="wf-3f2a")
            assert reply["result"]["workflow_id"] == "wf-3f2a9c"
            reply = await request(ws, "cancel", workflow_id="wf-3f")
            assert (reply["ok"], reply["code"]) == (False, "ambiguous")
            assert reply["candidates"] == ["wf-3f2a9c", "wf-3f2b17"]
            reply = await request(ws, "subscribe", workflow_id="wf-3f2b")
            assert reply["result"]["workflow_id"] == "wf-3f2b17"
            snapshot = await next_event(ws, "snapshot")
            assert [w["workflow_id"] for w in snapshot["workflows"]] == ["wf-3f2b17"]
            reply = await request(ws, "subscribe", workflow_id="wf-later")  # may come
            assert reply["result"]["workflow_id"] == "wf-later"
        await client.close()
